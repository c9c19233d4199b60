import NIOCore

/// The 5.0 tail that DISCONNECT, AUTH and the publish acknowledgements share: a reason code
/// that may be left off when it is Success and there are no properties, then the properties,
/// which may be left off when empty.
func reasonAndPropertiesLength(_ code: MQTTReasonCode, _ properties: MQTTProperties) -> Int {
    if !properties.isEmpty { return 1 + properties.encodedLength }
    return code == .success ? 0 : 1
}

func writeReasonAndProperties(
    _ code: MQTTReasonCode,
    _ properties: MQTTProperties,
    to buffer: inout ByteBuffer
) throws(MQTTEncodingError) {
    guard !properties.isEmpty || code != .success else { return }
    buffer.writeInteger(code.rawValue)
    if !properties.isEmpty { try properties.write(to: &buffer) }
}

func readReasonAndProperties(
    from reader: inout MQTTPacketReader
) throws(MQTTProtocolViolation) -> (MQTTReasonCode, MQTTProperties) {
    let type = reader.packetType
    guard !reader.isAtEnd else { return (.success, []) }
    let code = try reader.readByte()
    guard MQTTReasonCode.isAllowed(code, in: type) else { throw .invalidReasonCode(code, in: type) }
    let properties: MQTTProperties =
        reader.isAtEnd ? [] : try MQTTProperties.read(from: &reader, context: MQTTPropertyContext(type))
    try reader.expectEnd()
    return (MQTTReasonCode(rawValue: code), properties)
}
