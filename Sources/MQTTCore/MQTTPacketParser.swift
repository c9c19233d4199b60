public import NIOCore

/// The fixed header of a packet: type, flags and remaining length. [MQTT-2.1]
public struct MQTTFixedHeader: Hashable, Sendable {
    public var typeAndFlags: UInt8
    public var remainingLength: Int
    /// 1 + the bytes of the remaining-length integer.
    public var length: Int

    /// Reads a fixed header at the buffer's reader index without consuming it; nil while
    /// more bytes are needed.
    public static func peek(in buffer: ByteBuffer) throws(MQTTProtocolViolation) -> MQTTFixedHeader? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let (remaining, size) = try MQTTVariableByteInteger.peek(in: buffer, at: buffer.readerIndex + 1)
        else { return nil }
        return MQTTFixedHeader(typeAndFlags: first, remainingLength: remaining, length: 1 + size)
    }

    public var packetLength: Int { length + remainingLength }
}

/// Turns one complete packet (fixed header byte + body) into an `MQTTPacket`.
///
/// The parser tracks the protocol version: a server-side parser starts without one, accepts
/// only CONNECT first, and takes the version from it.
public struct MQTTPacketParser: Sendable {
    public private(set) var protocolVersion: MQTTProtocolVersion?

    /// A parser for the server side of a connection: CONNECT comes first and sets the version.
    public init() { self.protocolVersion = nil }

    /// A parser for a connection whose version is already known (the client side).
    public init(protocolVersion: MQTTProtocolVersion) { self.protocolVersion = protocolVersion }

    public mutating func parse(
        typeAndFlags: UInt8,
        body: ByteBuffer
    ) throws(MQTTProtocolViolation) -> MQTTPacket {
        let rawType = typeAndFlags >> 4
        let flags = typeAndFlags & 0x0F
        guard let type = MQTTPacketType(rawValue: rawType) else { throw .reservedPacketType(rawType) }
        guard let version = protocolVersion else {
            guard type == .connect else { throw .firstPacketNotConnect(type) }  // [MQTT-3.1.0-1]
            try Self.checkFlags(type: type, flags: flags)
            var reader = MQTTPacketReader(body, packetType: type)
            let connect = try MQTTPacket.Connect.read(from: &reader)
            protocolVersion = connect.protocolVersion
            return .connect(connect)
        }
        if type != .publish { try Self.checkFlags(type: type, flags: flags) }
        var reader = MQTTPacketReader(body, packetType: type)
        switch type {
        case .connect:
            // A second CONNECT parses normally; the connection's state machine refuses it.
            return .connect(try MQTTPacket.Connect.read(from: &reader))
        case .connack: return .connack(try MQTTPacket.ConnAck.read(from: &reader, version: version))
        case .publish:
            return .publish(try MQTTPacket.Publish.read(from: &reader, flags: flags, version: version))
        case .puback: return .puback(try MQTTPacket.PublishAcknowledgement.read(from: &reader, version: version))
        case .pubrec: return .pubrec(try MQTTPacket.PublishAcknowledgement.read(from: &reader, version: version))
        case .pubrel: return .pubrel(try MQTTPacket.PublishAcknowledgement.read(from: &reader, version: version))
        case .pubcomp: return .pubcomp(try MQTTPacket.PublishAcknowledgement.read(from: &reader, version: version))
        case .subscribe: return .subscribe(try MQTTPacket.Subscribe.read(from: &reader, version: version))
        case .suback: return .suback(try MQTTPacket.SubAck.read(from: &reader, version: version))
        case .unsubscribe: return .unsubscribe(try MQTTPacket.Unsubscribe.read(from: &reader, version: version))
        case .unsuback: return .unsuback(try MQTTPacket.UnsubAck.read(from: &reader, version: version))
        case .pingreq:
            try reader.expectEnd()
            return .pingreq
        case .pingresp:
            try reader.expectEnd()
            return .pingresp
        case .disconnect: return .disconnect(try MQTTPacket.Disconnect.read(from: &reader, version: version))
        case .auth:
            guard version == .v5 else { throw .reservedPacketType(rawType) }  // type 15 is reserved in 3.1.1
            return .auth(try MQTTPacket.Auth.read(from: &reader))
        }
    }

    /// Parses one whole packet from the start of `buffer`, consuming it. Nil when the buffer
    /// does not yet hold the whole packet.
    public mutating func parse(
        from buffer: inout ByteBuffer,
        maximumPacketSize: Int = MQTTFrameDecoder.protocolMaximumPacketSize
    ) throws(MQTTProtocolViolation) -> MQTTPacket? {
        guard let header = try MQTTFixedHeader.peek(in: buffer) else { return nil }
        // Refuse as soon as the length is known, before any of the body is buffered.
        guard header.packetLength <= maximumPacketSize else {
            throw .packetTooLarge(size: header.packetLength, maximum: maximumPacketSize)
        }
        guard buffer.readableBytes >= header.packetLength else { return nil }
        buffer.moveReaderIndex(forwardBy: header.length)
        guard let body = buffer.readSlice(length: header.remainingLength) else { return nil }
        return try parse(typeAndFlags: header.typeAndFlags, body: body)
    }

    private static func checkFlags(type: MQTTPacketType, flags: UInt8) throws(MQTTProtocolViolation) {
        guard flags == type.requiredFlags else { throw .invalidFixedHeaderFlags(type, flags: flags) }
    }
}
