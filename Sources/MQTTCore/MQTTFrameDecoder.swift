public import NIOCore

/// Frames the inbound byte stream into packets. It refuses an oversize packet as soon as its
/// remaining length is read, so a hostile length never makes the handler buffer the body.
public struct MQTTFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket

    /// 1 byte of type + 4 bytes of remaining length + 268,435,455 bytes of body.
    public static let protocolMaximumPacketSize = 1 + 4 + MQTTVariableByteInteger.maximum

    public var parser: MQTTPacketParser
    public let maximumPacketSize: Int

    public init(
        parser: MQTTPacketParser = MQTTPacketParser(),
        maximumPacketSize: Int = MQTTFrameDecoder.protocolMaximumPacketSize
    ) {
        self.parser = parser
        self.maximumPacketSize = maximumPacketSize
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> MQTTPacket? {
        try parser.parse(from: &buffer, maximumPacketSize: maximumPacketSize)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MQTTPacket? {
        // A partial packet at EOF is dropped with the connection; there is nobody to answer.
        try decode(buffer: &buffer)
    }
}

/// Encodes packets for a connection whose protocol version is fixed (clients, tests). The
/// broker writes shared pre-encoded buffers instead, so that fan-out encodes once.
public struct MQTTPacketEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MQTTPacket
    public let protocolVersion: MQTTProtocolVersion

    public init(protocolVersion: MQTTProtocolVersion) { self.protocolVersion = protocolVersion }

    public func encode(data: MQTTPacket, out: inout ByteBuffer) throws {
        try data.write(to: &out, version: protocolVersion)
    }
}
