import MQTTCore
import NIOCore

extension ByteBuffer {
    /// Bytes from hex text; spaces and newlines are ignored so tables can be laid out by field.
    init(hex: String) {
        let digits = Array(hex.filter { !$0.isWhitespace })
        var bytes: [UInt8] = []
        var index = 0
        while index + 1 < digits.count {
            bytes.append(UInt8(String(digits[index...index + 1]), radix: 16) ?? 0)
            index += 2
        }
        self.init(bytes: bytes)
    }

    var hexString: String {
        readableBytesView.map { byte in
            let digits = String(byte, radix: 16)
            return byte < 16 ? "0" + digits : digits
        }.joined()
    }
}

/// Parses every packet in `hex`, as a server would (CONNECT first) or with a known version.
func parseAll(_ hex: String, version: MQTTProtocolVersion? = nil, maximumPacketSize: Int? = nil)
    throws(MQTTProtocolViolation) -> [MQTTPacket]
{
    var parser = version.map { MQTTPacketParser(protocolVersion: $0) } ?? MQTTPacketParser()
    var buffer = ByteBuffer(hex: hex)
    var packets: [MQTTPacket] = []
    while buffer.readableBytes > 0 {
        guard
            let packet = try parser.parse(
                from: &buffer,
                maximumPacketSize: maximumPacketSize ?? MQTTFrameDecoder.protocolMaximumPacketSize
            )
        else { break }
        packets.append(packet)
    }
    return packets
}

/// Encodes then decodes with a parser of the same version.
func roundTrip(_ packet: MQTTPacket, version: MQTTProtocolVersion) throws -> MQTTPacket? {
    var buffer = try packet.encoded(version: version)
    var parser = MQTTPacketParser(protocolVersion: version)
    let decoded = try parser.parse(from: &buffer)
    guard buffer.readableBytes == 0 else { return nil }
    return decoded
}
