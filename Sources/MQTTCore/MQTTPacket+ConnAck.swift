import NIOCore

extension MQTTPacket {
    /// CONNACK (§3.2). Under 3.1.1 the reason code travels as the nearest return code
    /// (see `MQTTConnectReturnCode`).
    public struct ConnAck: Equatable, Sendable {
        public var sessionPresent: Bool
        public var reasonCode: MQTTReasonCode
        public var properties: MQTTProperties

        public init(
            sessionPresent: Bool = false, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []
        ) {
            self.sessionPresent = sessionPresent
            self.reasonCode = reasonCode
            self.properties = properties
        }
    }
}

extension MQTTPacket.ConnAck {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        version == .v5 ? 2 + properties.encodedLength : 2
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        buffer.writeInteger(UInt8(sessionPresent ? 1 : 0))
        switch version {
        case .v5:
            buffer.writeInteger(reasonCode.rawValue)
            try properties.write(to: &buffer)
        case .v311:
            buffer.writeInteger(MQTTConnectReturnCode(reasonCode).rawValue)
        }
    }

    static func read(
        from reader: inout MQTTPacketReader,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        let acknowledgeFlags = try reader.readByte()
        guard acknowledgeFlags & 0xFE == 0 else { throw .reservedConnackFlags }  // [MQTT-3.2.2-1]
        let code = try reader.readByte()
        let reasonCode: MQTTReasonCode
        var properties: MQTTProperties = []
        switch version {
        case .v5:
            guard MQTTReasonCode.isAllowed(code, in: .connack) else { throw .invalidReasonCode(code, in: .connack) }
            reasonCode = MQTTReasonCode(rawValue: code)
            properties = try MQTTProperties.read(from: &reader, context: .connack)
        case .v311:
            guard let returnCode = MQTTConnectReturnCode(rawValue: code) else {
                throw .invalidReasonCode(code, in: .connack)
            }
            reasonCode = returnCode.reasonCode
        }
        try reader.expectEnd()
        return Self(sessionPresent: acknowledgeFlags & 1 != 0, reasonCode: reasonCode, properties: properties)
    }
}
