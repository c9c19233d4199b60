import GatehouseTransport
import Logging
import MQTTCore
import NIOCore
import NIOEmbedded
import Testing

/// The server pipeline as built by `configureMQTTServerPipeline`, driven through an
/// `EmbeddedChannel` with bytes a client would send.
@Suite("server pipeline")
struct PipelineTests {
    private func makeChannel(limits: MQTTConnectionLimits = MQTTConnectionLimits()) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.configureMQTTServerPipeline(
            limits: limits, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private func written(_ channel: EmbeddedChannel) throws -> String? {
        try channel.readOutbound(as: ByteBuffer.self).map { buffer in
            buffer.readableBytesView.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        }
    }

    @Test("a 5.0 CONNECT gets CONNACK 0x88 and the connection closes")
    func connect5() throws {
        let channel = try makeChannel()
        try channel.writeInbound(
            try MQTTPacket.connect(.init(protocolVersion: .v5, clientIdentifier: "d1")).encoded(version: .v5))
        #expect(try written(channel) == "2003008800")
        #expect(!channel.isActive)
    }

    @Test("a 3.1.1 CONNECT gets return code 3")
    func connect311() throws {
        let channel = try makeChannel()
        try channel.writeInbound(
            try MQTTPacket.connect(.init(protocolVersion: .v311, clientIdentifier: "d1")).encoded(version: .v311))
        #expect(try written(channel) == "20020003")
        #expect(!channel.isActive)
    }

    @Test("MQTT 3.1 gets return code 1, unacceptable protocol version")
    func connect31() throws {
        let channel = try makeChannel()
        let mqisdp: [UInt8] = [0x10, 0x0E, 0x00, 0x06] + Array("MQIsdp".utf8) + [0x03, 0x02, 0x00, 0x0A, 0x00, 0x00]
        _ = try? channel.writeInbound(ByteBuffer(bytes: mqisdp))
        #expect(try written(channel) == "20020001")
        #expect(!channel.isActive)
    }

    @Test("garbage closes the connection without a reply")
    func garbage() throws {
        let channel = try makeChannel()
        _ = try? channel.writeInbound(ByteBuffer(bytes: [0x00, 0x00]))
        #expect(try written(channel) == nil)
        #expect(!channel.isActive)
    }

    @Test("an oversize first packet is refused from its header")
    func oversize() throws {
        let channel = try makeChannel(limits: MQTTConnectionLimits(maximumPacketSize: 128))
        _ = try? channel.writeInbound(ByteBuffer(bytes: [0x10, 0xFF, 0x7F]))
        #expect(try written(channel) == nil)
        #expect(!channel.isActive)
    }

    @Test("a connection that sends nothing is closed at the connect timeout")
    func connectTimeout() throws {
        let channel = try makeChannel(limits: MQTTConnectionLimits(connectTimeout: .seconds(5)))
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }
}

@Suite("listen addresses")
struct ListenAddressTests {
    @Test("valid URLs")
    func valid() throws {
        #expect(try ListenAddress(parsing: "mqtt://127.0.0.1:1883") == ListenAddress(host: "127.0.0.1", port: 1883))
        #expect(try ListenAddress(parsing: "mqtt://[::1]:0") == ListenAddress(host: "::1", port: 0))
        #expect(try ListenAddress(parsing: "mqtt://localhost:65535").description == "mqtt://localhost:65535")
        #expect(ListenAddress(host: "::1", port: 1883).description == "mqtt://[::1]:1883")
    }

    @Test(
        "invalid URLs say what is wrong",
        arguments: [
            ("127.0.0.1:1883", "must look like"),
            ("mqtts://127.0.0.1:8883", "not supported yet"),
            ("mqtt://127.0.0.1", "no port"),
            ("mqtt://:1883", "no host"),
            ("mqtt://h:99999", "invalid port"),
            ("mqtt://h:x", "invalid port"),
            ("mqtt://[::1:1883", "unclosed IPv6"),
        ])
    func invalid(text: String, message: String) {
        #expect {
            try ListenAddress(parsing: text)
        } throws: { error in
            (error as? ListenAddress.ParseError)?.description.contains(message) == true
        }
    }
}
