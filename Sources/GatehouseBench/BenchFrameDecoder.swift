import MQTTCore
import NIOCore

/// What a load-generating client reads: the packets of the message path in a few fields
/// each, everything else as a whole packet.
enum BenchInbound {
    /// A delivery: its QoS and packet identifier, and the generator's header from the payload
    /// (nil fields when the payload is not one of ours).
    case publish(qos: MQTTQoS, packetIdentifier: UInt16, sentAt: UInt64?, publisher: UInt32?)
    /// PUBACK, PUBREC, PUBREL or PUBCOMP.
    case acknowledgement(MQTTPacketType, packetIdentifier: UInt16, reasonCode: UInt8)
    case packet(MQTTPacket)
}

/// Frames the generator's input like `MQTTFrameDecoder`, but reads a PUBLISH and an
/// acknowledgement in place, without making the topic a String or parsing properties it
/// does not need: the generator should cost the machine far less than the broker it loads.
struct BenchFrameDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = BenchInbound

    private var parser: MQTTPacketParser
    private let version: MQTTProtocolVersion

    init(version: MQTTProtocolVersion) {
        self.version = version
        self.parser = MQTTPacketParser(protocolVersion: version)
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> BenchInbound? {
        guard let header = try MQTTFixedHeader.peek(in: buffer), buffer.readableBytes >= header.packetLength
        else { return nil }
        let type = header.typeAndFlags >> 4
        let body = buffer.readerIndex + header.length
        let end = buffer.readerIndex + header.packetLength
        switch MQTTPacketType(rawValue: type) {
        case .publish:
            guard let qos = MQTTQoS(rawValue: (header.typeAndFlags >> 1) & 0x03),
                let topicLength = buffer.getInteger(at: body, as: UInt16.self)
            else { break }
            var offset = body + 2 + Int(topicLength)
            var packetIdentifier: UInt16 = 0
            if qos != .atMostOnce {
                guard let identifier = buffer.getInteger(at: offset, as: UInt16.self) else { break }
                packetIdentifier = identifier
                offset += 2
            }
            if version == .v5 {
                guard let (propertiesLength, size) = try MQTTVariableByteInteger.peek(in: buffer, at: offset)
                else { break }
                offset += size + propertiesLength
            }
            let hasHeader = end - offset >= BenchPayload.headerSize
            let sentAt = hasHeader ? buffer.getInteger(at: offset, as: UInt64.self) : nil
            let publisher = hasHeader ? buffer.getInteger(at: offset + 8, as: UInt32.self) : nil
            buffer.moveReaderIndex(to: end)
            return .publish(qos: qos, packetIdentifier: packetIdentifier, sentAt: sentAt, publisher: publisher)
        case .some(let known) where [.puback, .pubrec, .pubrel, .pubcomp].contains(known):
            guard header.remainingLength >= 2, let identifier = buffer.getInteger(at: body, as: UInt16.self)
            else { break }
            // A 5.0 acknowledgement of exactly two bytes means success.
            let reasonCode = header.remainingLength > 2 ? buffer.getInteger(at: body + 2, as: UInt8.self) ?? 0 : 0
            buffer.moveReaderIndex(to: end)
            return .acknowledgement(known, packetIdentifier: identifier, reasonCode: reasonCode)
        default:
            break
        }
        // Anything else, and a malformed message-path packet, goes through the full parser,
        // which says what is wrong with it.
        return try parser.parse(from: &buffer).map(BenchInbound.packet)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> BenchInbound? {
        try decode(buffer: &buffer)
    }
}
