import NIOCore

extension MQTTPacket {
    /// SUBACK (§3.9): one reason code per requested filter, in order. Under 3.1.1 any
    /// failure code travels as 0x80.
    public struct SubAck: Equatable, Sendable {
        public var packetIdentifier: UInt16
        public var reasonCodes: [MQTTReasonCode]
        public var properties: MQTTProperties

        public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode], properties: MQTTProperties = []) {
            self.packetIdentifier = packetIdentifier
            self.reasonCodes = reasonCodes
            self.properties = properties
        }
    }
}

extension MQTTPacket.SubAck {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        2 + reasonCodes.count + (version == .v5 ? properties.encodedLength : 0)
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { try properties.write(to: &buffer) }
        for code in reasonCodes {
            let byte = version == .v5 || !code.isFailure ? code.rawValue : MQTTReasonCode.unspecifiedError.rawValue
            buffer.writeInteger(byte)
        }
    }

    static func read(
        from reader: inout MQTTPacketReader,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        let packetIdentifier = try reader.readPacketIdentifier()
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &reader, context: .suback) : []
        var codes: [MQTTReasonCode] = []
        while !reader.isAtEnd {
            let code = try reader.readByte()
            let allowed = version == .v5 ? MQTTReasonCode.isAllowed(code, in: .suback) : [0, 1, 2, 0x80].contains(code)
            guard allowed else { throw .invalidReasonCode(code, in: .suback) }
            codes.append(MQTTReasonCode(rawValue: code))
        }
        guard !codes.isEmpty else { throw .noReasonCodes(.suback) }
        return Self(packetIdentifier: packetIdentifier, reasonCodes: codes, properties: properties)
    }
}
