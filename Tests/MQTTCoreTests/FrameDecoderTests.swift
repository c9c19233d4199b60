import MQTTCore
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@Suite("frame decoder")
struct FrameDecoderTests {
    static let packets: [MQTTPacket] = [
        .publish(
            .init(
                topicName: "a/b", payload: ByteBuffer(repeating: 7, count: 300), qos: .atLeastOnce, packetIdentifier: 3)
        ),
        .puback(.init(packetIdentifier: 3, reasonCode: .noMatchingSubscribers)),
        .subscribe(
            .init(
                packetIdentifier: 4, subscriptions: [.init(topicFilter: "x/#")],
                properties: [.subscriptionIdentifier(300)])),
        .pingreq,
        .disconnect(.init(reasonCode: .serverShuttingDown, properties: [.reasonString("bye")])),
    ]

    @Test("byte-by-byte and many-per-buffer delivery give the same packets")
    func dripFeed() throws {
        let pairs = try Self.packets.map { packet in (try packet.encoded(version: .v5), [packet]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            MQTTFrameDecoder(parser: MQTTPacketParser(protocolVersion: .v5))
        }
    }

    @Test("the server-side decoder takes the version from CONNECT")
    func versionFromConnect() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTFrameDecoder()))
        var bytes = try MQTTPacket.connect(.init(protocolVersion: .v311, clientIdentifier: "x")).encoded(version: .v311)
        // The same bytes are a 3.1.1 PUBACK; read as 5.0 they would be a malformed one.
        bytes.writeBytes([0x40, 0x02, 0x00, 0x01])
        try channel.writeInbound(bytes)
        #expect(try channel.readInbound(as: MQTTPacket.self)?.type == .connect)
        #expect(try channel.readInbound(as: MQTTPacket.self) == .puback(.init(packetIdentifier: 1)))
        _ = try channel.finish()
    }

    @Test("an oversize packet is refused before its body is buffered")
    func oversize() throws {
        let channel = EmbeddedChannel(
            handler: ByteToMessageHandler(
                MQTTFrameDecoder(parser: MQTTPacketParser(protocolVersion: .v5), maximumPacketSize: 100)))
        // Two bytes announce a 1 MiB body; none of the body is ever sent.
        #expect(throws: MQTTProtocolViolation.packetTooLarge(size: 1 + 3 + 1_048_576, maximum: 100)) {
            try channel.writeInbound(ByteBuffer(bytes: [0x30, 0x80, 0x80, 0x40]))
        }
        _ = try? channel.finish()
    }

    @Test("a packet split across reads waits for its last byte")
    func partialPacket() throws {
        let channel = EmbeddedChannel(
            handler: ByteToMessageHandler(MQTTFrameDecoder(parser: MQTTPacketParser(protocolVersion: .v5))))
        var bytes = try MQTTPacket.publish(.init(topicName: "t", payload: ByteBuffer(string: "hello"))).encoded(
            version: .v5)
        let head = bytes.readSlice(length: 4) ?? ByteBuffer()
        try channel.writeInbound(head)
        #expect(try channel.readInbound(as: MQTTPacket.self) == nil)
        try channel.writeInbound(bytes)
        #expect(try channel.readInbound(as: MQTTPacket.self)?.type == .publish)
        _ = try channel.finish()
    }

    @Test("the encoder handler writes packets in its version")
    func encoder() throws {
        let channel = EmbeddedChannel(handler: MessageToByteHandler(MQTTPacketEncoder(protocolVersion: .v311)))
        try channel.writeOutbound(MQTTPacket.connack(.init(sessionPresent: true, reasonCode: .notAuthorized)))
        #expect(try channel.readOutbound(as: ByteBuffer.self)?.hexString == "20020105")
        _ = try channel.finish()
    }
}
