import GatehouseAuth
import GatehouseBroker
import Logging
import MQTTCore
import NIOCore
import NIOEmbedded
import Testing

@testable import GatehouseTransport

/// The server pipeline as built by `configureMQTTServerPipeline`, driven through NIO's
/// thread-safe testing channel (authentication completes off the event loop).
@Suite("server pipeline", .timeLimit(.minutes(1)))
struct PipelineTests {
    /// A broker whose only authenticator chain is empty: every CONNECT is refused.
    private func makeChannel(limits: MQTTConnectionLimits = MQTTConnectionLimits()) async throws
        -> NIOAsyncTestingChannel
    {
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let broker = Broker(
            configuration: BrokerConfiguration(), authenticator: AuthenticatorChain([]),
            authorizer: AllowAllAuthorizer(), logger: logger)
        let channel = NIOAsyncTestingChannel()
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.configureMQTTServerPipeline(
                broker: broker, eventLoop: channel.eventLoop, limits: limits, logger: logger)
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
        return channel
    }

    private func written(_ channel: NIOAsyncTestingChannel) async throws -> String {
        await channel.testingEventLoop.run()
        let buffer = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
        return buffer.readableBytesView.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    private func closed(_ channel: NIOAsyncTestingChannel) async throws -> Bool {
        await channel.testingEventLoop.run()
        try await channel.closeFuture.get()
        return !channel.isActive
    }

    @Test("with no authentication method, a 5.0 CONNECT gets CONNACK 0x87 and the connection closes")
    func connect5() async throws {
        let channel = try await makeChannel()
        try await channel.writeInbound(
            try MQTTPacket.connect(.init(protocolVersion: .v5, clientIdentifier: "d1")).encoded(version: .v5))
        #expect(try await written(channel) == "2003008700")
        #expect(try await closed(channel))
    }

    @Test("a 3.1.1 CONNECT with a password gets return code 4, bad user name or password")
    func connect311() async throws {
        let channel = try await makeChannel()
        let connect = MQTTPacket.connect(
            .init(protocolVersion: .v311, clientIdentifier: "d1", username: "u", password: [1]))
        try await channel.writeInbound(try connect.encoded(version: .v311))
        #expect(try await written(channel) == "20020004")
        #expect(try await closed(channel))
    }

    @Test("MQTT 3.1 gets return code 1, unacceptable protocol version")
    func connect31() async throws {
        let channel = try await makeChannel()
        let mqisdp: [UInt8] = [0x10, 0x0E, 0x00, 0x06] + Array("MQIsdp".utf8) + [0x03, 0x02, 0x00, 0x0A, 0x00, 0x00]
        _ = try? await channel.writeInbound(ByteBuffer(bytes: mqisdp))
        #expect(try await written(channel) == "20020001")
        #expect(try await closed(channel))
    }

    @Test("garbage closes the connection without a reply")
    func garbage() async throws {
        let channel = try await makeChannel()
        _ = try? await channel.writeInbound(ByteBuffer(bytes: [0x00, 0x00]))
        #expect(try await closed(channel))
        #expect(try await channel.readOutbound(as: ByteBuffer.self) == nil)
    }

    @Test("an oversize first packet is refused from its header")
    func oversize() async throws {
        let channel = try await makeChannel(limits: MQTTConnectionLimits(maximumPacketSize: 128))
        _ = try? await channel.writeInbound(ByteBuffer(bytes: [0x10, 0xFF, 0x7F]))
        #expect(try await closed(channel))
        #expect(try await channel.readOutbound(as: ByteBuffer.self) == nil)
    }

    @Test("a connection that sends nothing is closed at the connect timeout")
    func connectTimeout() async throws {
        let channel = try await makeChannel(limits: MQTTConnectionLimits(connectTimeout: .seconds(5)))
        await channel.testingEventLoop.advanceTime(by: .seconds(4))
        #expect(channel.isActive)
        await channel.testingEventLoop.advanceTime(by: .seconds(1))
        #expect(try await closed(channel))
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
        #expect(
            try ListenAddress(parsing: "mqtts://0.0.0.0:8883") == ListenAddress(kind: .tls, host: "0.0.0.0", port: 8883)
        )
        #expect(try ListenAddress(parsing: "ws://h:80").path == "/mqtt")
        #expect(try ListenAddress(parsing: "WSS://[::]:443/broker/mqtt").description == "wss://[::]:443/broker/mqtt")
        #expect(try ListenAddress(parsing: "wss://h:443/x").kind.usesTLS)
    }

    @Test(
        "invalid URLs say what is wrong",
        arguments: [
            ("127.0.0.1:1883", "must look like"),
            ("mqttx://127.0.0.1:8883", "not one of mqtt, mqtts, ws, wss"),
            ("mqtts://h:8883/path", "only ws:// and wss:// take"),
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

/// The stages before CONNECT, on an EmbeddedChannel whose clock the test moves.
@Suite("connect budget")
struct ConnectBudgetTests {
    @Test("the WebSocket upgrade and CONNECT share one connect timeout, counted from accept")
    func sharedBudget() throws {
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let broker = Broker(
            configuration: BrokerConfiguration(), authenticator: AuthenticatorChain([]),
            authorizer: AllowAllAuthorizer(), logger: logger)
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.configureListenerPipeline(
            channel: channel, listener: ListenAddress(kind: .ws, host: "127.0.0.1", port: 0, path: "/mqtt"), tls: nil,
            broker: broker, limits: MQTTConnectionLimits(connectTimeout: .seconds(10)), logger: logger)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        let upgrade = """
            GET /mqtt HTTP/1.1\r
            Host: localhost\r
            Upgrade: websocket\r
            Connection: Upgrade\r
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r
            Sec-WebSocket-Version: 13\r
            Sec-WebSocket-Protocol: mqtt\r
            \r

            """
        try channel.writeInbound(ByteBuffer(string: upgrade))
        channel.embeddedEventLoop.run()
        let response = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(String(buffer: response).hasPrefix("HTTP/1.1 101"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(channel.isActive)  // 9 s after accept
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)  // 11 s: no CONNECT within the 10 s from accept
    }
}

@Suite("pending connects")
struct PendingConnectsTests {
    @Test("past the limit the oldest connection still without CONNECT is closed; finished ones are not counted")
    func oldestClosed() throws {
        let pending = PendingConnects(limit: 2)
        let channels = (0..<4).map { _ in EmbeddedChannel() }
        for channel in channels { try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait() }
        let first = pending.accepted(channels[0])
        let second = pending.accepted(channels[1])
        pending.finished(first)  // its CONNECT was accepted
        _ = pending.accepted(channels[2])
        #expect(channels.allSatisfy(\.isActive) && pending.count == 2)
        _ = pending.accepted(channels[3])
        #expect(!channels[1].isActive && channels[0].isActive && channels[2].isActive && channels[3].isActive)
        #expect(pending.closedAtLimit == 1 && pending.count == 2)
        pending.finished(second)  // closing reports it again: no harm
        #expect(pending.count == 2)
    }
}
