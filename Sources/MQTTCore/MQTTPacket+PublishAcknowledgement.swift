import NIOCore

extension MQTTPacket {
    /// The body shared by PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4–3.7).
    public struct PublishAcknowledgement: Equatable, Sendable {
        public var packetIdentifier: UInt16
        public var reasonCode: MQTTReasonCode
        public var properties: MQTTProperties

        public init(packetIdentifier: UInt16, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
            self.packetIdentifier = packetIdentifier
            self.reasonCode = reasonCode
            self.properties = properties
        }
    }
}

extension MQTTPacket.PublishAcknowledgement {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        2 + (version == .v5 ? reasonAndPropertiesLength(reasonCode, properties) : 0)
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { try writeReasonAndProperties(reasonCode, properties, to: &buffer) }
    }

    static func read(
        from reader: inout MQTTPacketReader,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        let packetIdentifier = try reader.readPacketIdentifier()
        guard version == .v5 else {
            try reader.expectEnd()
            return Self(packetIdentifier: packetIdentifier)
        }
        let (code, properties) = try readReasonAndProperties(from: &reader)
        return Self(packetIdentifier: packetIdentifier, reasonCode: code, properties: properties)
    }
}
