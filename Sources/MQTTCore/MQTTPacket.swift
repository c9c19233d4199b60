public import NIOCore

/// Every MQTT control packet of 3.1.1 and 5.0. Version differences live in the encoder and
/// parser, which take the connection's protocol version; the values are the same.
public enum MQTTPacket: Equatable, Sendable {
    case connect(Connect)
    case connack(ConnAck)
    case publish(Publish)
    case puback(PublishAcknowledgement)
    case pubrec(PublishAcknowledgement)
    case pubrel(PublishAcknowledgement)
    case pubcomp(PublishAcknowledgement)
    case subscribe(Subscribe)
    case suback(SubAck)
    case unsubscribe(Unsubscribe)
    case unsuback(UnsubAck)
    case pingreq
    case pingresp
    case disconnect(Disconnect)
    case auth(Auth)

    public var type: MQTTPacketType {
        switch self {
        case .connect: .connect
        case .connack: .connack
        case .publish: .publish
        case .puback: .puback
        case .pubrec: .pubrec
        case .pubrel: .pubrel
        case .pubcomp: .pubcomp
        case .subscribe: .subscribe
        case .suback: .suback
        case .unsubscribe: .unsubscribe
        case .unsuback: .unsuback
        case .pingreq: .pingreq
        case .pingresp: .pingresp
        case .disconnect: .disconnect
        case .auth: .auth
        }
    }

    /// Writes the whole packet, fixed header included. CONNECT is always written in its own
    /// protocol version; every other packet in `version`.
    public func write(
        to buffer: inout ByteBuffer,
        version: MQTTProtocolVersion
    ) throws(MQTTEncodingError) {
        let flags: UInt8
        let bodyLength: Int
        switch self {
        case .connect(let connect):
            flags = 0
            bodyLength = connect.bodyLength
        case .connack(let connack):
            flags = 0
            bodyLength = connack.bodyLength(version: version)
        case .publish(let publish):
            flags = publish.fixedHeaderFlags
            bodyLength = publish.bodyLength(version: version)
        case .puback(let ack), .pubrec(let ack), .pubrel(let ack), .pubcomp(let ack):
            flags = type.requiredFlags
            bodyLength = ack.bodyLength(version: version)
        case .subscribe(let subscribe):
            flags = type.requiredFlags
            bodyLength = subscribe.bodyLength(version: version)
        case .suback(let suback):
            flags = 0
            bodyLength = suback.bodyLength(version: version)
        case .unsubscribe(let unsubscribe):
            flags = type.requiredFlags
            bodyLength = unsubscribe.bodyLength(version: version)
        case .unsuback(let unsuback):
            flags = 0
            bodyLength = unsuback.bodyLength(version: version)
        case .pingreq, .pingresp:
            flags = 0
            bodyLength = 0
        case .disconnect(let disconnect):
            flags = 0
            bodyLength = disconnect.bodyLength(version: version)
        case .auth(let auth):
            guard version == .v5 else { throw .packetNotInVersion(.auth, version) }
            flags = 0
            bodyLength = auth.bodyLength
        }
        guard bodyLength <= MQTTVariableByteInteger.maximum else { throw .packetTooLarge(bodyLength) }

        buffer.reserveCapacity(
            minimumWritableBytes: 1 + MQTTVariableByteInteger.encodedLength(of: bodyLength) + bodyLength
        )
        buffer.writeInteger(type.rawValue << 4 | flags)
        try buffer.writeMQTTVariableByteInteger(bodyLength)
        let bodyStart = buffer.writerIndex

        switch self {
        case .connect(let connect): try connect.writeBody(to: &buffer)
        case .connack(let connack): try connack.writeBody(to: &buffer, version: version)
        case .publish(let publish): try publish.writeBody(to: &buffer, version: version)
        case .puback(let ack), .pubrec(let ack), .pubrel(let ack), .pubcomp(let ack):
            try ack.writeBody(to: &buffer, version: version)
        case .subscribe(let subscribe): try subscribe.writeBody(to: &buffer, version: version)
        case .suback(let suback): try suback.writeBody(to: &buffer, version: version)
        case .unsubscribe(let unsubscribe): try unsubscribe.writeBody(to: &buffer, version: version)
        case .unsuback(let unsuback): try unsuback.writeBody(to: &buffer, version: version)
        case .pingreq, .pingresp: break
        case .disconnect(let disconnect): try disconnect.writeBody(to: &buffer, version: version)
        case .auth(let auth): try auth.writeBody(to: &buffer)
        }
        assert(buffer.writerIndex - bodyStart == bodyLength, "body length of \(type) miscounted")
    }

    /// The packet as a new buffer.
    public func encoded(
        version: MQTTProtocolVersion,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) throws(MQTTEncodingError) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64)
        try write(to: &buffer, version: version)
        return buffer
    }
}

extension Optional where Wrapped == String {
    var mqttEncodedLength: Int { self.map { 2 + $0.utf8.count } ?? 0 }
}
