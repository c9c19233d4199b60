import NIOCore

extension MQTTPacket {
    /// DISCONNECT (§3.14). 3.1.1 carries nothing: decoding one gives Normal disconnection.
    public struct Disconnect: Equatable, Sendable {
        public var reasonCode: MQTTReasonCode
        public var properties: MQTTProperties

        public init(reasonCode: MQTTReasonCode = .normalDisconnection, properties: MQTTProperties = []) {
            self.reasonCode = reasonCode
            self.properties = properties
        }
    }

    /// AUTH (§3.15), 5.0 only: extended authentication exchanges.
    public struct Auth: Equatable, Sendable {
        public var reasonCode: MQTTReasonCode
        public var properties: MQTTProperties

        public init(reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
            self.reasonCode = reasonCode
            self.properties = properties
        }
    }
}

extension MQTTPacket.Disconnect {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        version == .v5 ? reasonAndPropertiesLength(reasonCode, properties) : 0
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        if version == .v5 { try writeReasonAndProperties(reasonCode, properties, to: &buffer) }
    }

    static func read(
        from reader: inout MQTTPacketReader,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        guard version == .v5 else {
            try reader.expectEnd()
            return Self()
        }
        let (code, properties) = try readReasonAndProperties(from: &reader)
        return Self(reasonCode: code, properties: properties)
    }
}

extension MQTTPacket.Auth {
    var bodyLength: Int { reasonAndPropertiesLength(reasonCode, properties) }

    func writeBody(to buffer: inout ByteBuffer) throws(MQTTEncodingError) {
        try writeReasonAndProperties(reasonCode, properties, to: &buffer)
    }

    static func read(from reader: inout MQTTPacketReader) throws(MQTTProtocolViolation) -> Self {
        let (code, properties) = try readReasonAndProperties(from: &reader)
        return Self(reasonCode: code, properties: properties)
    }
}
