import MQTTCore
import NIOCore

/// Feeds arbitrary bytes to the frame decoder. The first byte picks how the connection is
/// read: as a server (CONNECT first), as a 5.0 or a 3.1.1 client, with a small or the protocol's
/// maximum packet size. Beyond "no crash", every packet that decodes must encode and decode
/// back to itself.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let mode = data[0]
    var buffer = ByteBuffer(bytes: UnsafeBufferPointer(start: data + 1, count: size - 1))
    let parser: MQTTPacketParser =
        switch mode % 3 {
        case 0: MQTTPacketParser()
        case 1: MQTTPacketParser(protocolVersion: .v5)
        default: MQTTPacketParser(protocolVersion: .v311)
        }
    let maximumPacketSize = mode & 0x80 != 0 ? 64 : MQTTFrameDecoder.protocolMaximumPacketSize
    var decoder = MQTTFrameDecoder(parser: parser, maximumPacketSize: maximumPacketSize)
    while true {
        let packet: MQTTPacket?
        do {
            packet = try decoder.decode(buffer: &buffer)
        } catch {
            return 0
        }
        guard let packet, let version = decoder.parser.protocolVersion else { return 0 }
        checkRoundTrip(packet, version: version)
    }
}

private func checkRoundTrip(_ packet: MQTTPacket, version: MQTTProtocolVersion) {
    let encodingVersion: MQTTProtocolVersion
    if case .connect(let connect) = packet {
        encodingVersion = connect.protocolVersion
    } else {
        encodingVersion = version
    }
    do {
        var encoded = try packet.encoded(version: encodingVersion)
        var parser = MQTTPacketParser(protocolVersion: encodingVersion)
        let decoded = try parser.parse(from: &encoded)
        precondition(decoded == packet, "round trip changed \(packet) into \(String(describing: decoded))")
        precondition(encoded.readableBytes == 0, "re-encoded \(packet.type) left bytes over")
    } catch {
        preconditionFailure("a decoded \(packet.type) failed to round-trip: \(error)")
    }
}
