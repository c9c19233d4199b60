import GatehouseAuth
import GatehouseBroker
import Logging
import MQTTCore
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import Testing

@testable import GatehouseTransport

/// The WebSocket framing in front of the MQTT pipeline, on an EmbeddedChannel.
@Suite("WebSocket framing")
struct WebSocketHandlerTests {
    private let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    private func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MQTTWebSocketHandler(logger: logger))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        WebSocketFrame(
            fin: fin, opcode: opcode, maskKey: [1, 2, 3, 4],
            data: ByteBuffer(
                bytes: bytes.enumerated().map {
                    $0.element ^ [1, 2, 3, 4][$0.offset % 4]
                }))
    }

    @Test("binary and continuation frames become the unmasked MQTT byte stream, in order")
    func binaryFrames() throws {
        let channel = try makeChannel()
        try channel.writeInbound(frame(.binary, [0x10, 0x0F, 0x00], fin: false))
        try channel.writeInbound(frame(.continuation, [0x04, 0x4D]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [0x10, 0x0F, 0x00]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [0x04, 0x4D]))
    }

    @Test("outbound bytes leave as one final binary frame each")
    func outbound() throws {
        let channel = try makeChannel()
        try channel.writeOutbound(ByteBuffer(bytes: [0x20, 0x02, 0x00, 0x00]))
        let sent = try #require(try channel.readOutbound(as: WebSocketFrame.self))
        #expect(sent.opcode == .binary && sent.fin && sent.data == ByteBuffer(bytes: [0x20, 0x02, 0x00, 0x00]))
    }

    @Test("ping is answered with a pong carrying the same data")
    func ping() throws {
        let channel = try makeChannel()
        try channel.writeInbound(frame(.ping, [7, 8, 9]))
        let pong = try #require(try channel.readOutbound(as: WebSocketFrame.self))
        #expect(pong.opcode == .pong && pong.data == ByteBuffer(bytes: [7, 8, 9]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test("a text frame is answered with close 1003 and the connection closes [MQTT-6.0.0-1]")
    func textFrame() throws {
        let channel = try makeChannel()
        try channel.writeInbound(frame(.text, Array("hello".utf8)))
        var close = try #require(try channel.readOutbound(as: WebSocketFrame.self))
        #expect(close.opcode == .connectionClose && close.data.readWebSocketErrorCode() == .unacceptableData)
        #expect(!channel.isActive)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test("closing the connection (a DISCONNECT) sends one close frame 1000 first")
    func closeSendsCloseFrame() throws {
        let channel = try makeChannel()
        try channel.close().wait()
        var close = try #require(try channel.readOutbound(as: WebSocketFrame.self))
        #expect(close.opcode == .connectionClose && close.data.readWebSocketErrorCode() == .normalClosure)
        #expect(try channel.readOutbound(as: WebSocketFrame.self) == nil)
    }

    @Test("the upgrade needs the configured path and the mqtt (or mqttv3.1) subprotocol")
    func upgradeHeaders() {
        func head(_ uri: String, _ protocols: String?) -> HTTPRequestHead {
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: uri)
            if let protocols { head.headers.add(name: "Sec-WebSocket-Protocol", value: protocols) }
            return head
        }
        let chosen = { (head: HTTPRequestHead) in
            MQTTWebSocketSubprotocol.upgradeHeaders(for: head, path: "/mqtt")?.first(name: "Sec-WebSocket-Protocol")
        }
        #expect(chosen(head("/mqtt", "mqtt")) == "mqtt")
        #expect(chosen(head("/mqtt?x=1", "chat, mqttv3.1")) == "mqttv3.1")
        #expect(chosen(head("/mqtt", "MQTT")) == "mqtt")
        #expect(chosen(head("/other", "mqtt")) == nil)
        #expect(chosen(head("/mqtt", "chat")) == nil)
        #expect(chosen(head("/mqtt", nil)) == nil)
    }
}
