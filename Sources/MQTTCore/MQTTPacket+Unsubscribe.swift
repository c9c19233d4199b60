import NIOCore

extension MQTTPacket {
    /// UNSUBSCRIBE (§3.10).
    public struct Unsubscribe: Equatable, Sendable {
        public var packetIdentifier: UInt16
        public var topicFilters: [String]
        public var properties: MQTTProperties

        public init(packetIdentifier: UInt16, topicFilters: [String], properties: MQTTProperties = []) {
            self.packetIdentifier = packetIdentifier
            self.topicFilters = topicFilters
            self.properties = properties
        }
    }

    /// UNSUBACK (§3.11). 3.1.1 has no reason codes: they are empty after decoding one.
    public struct UnsubAck: Equatable, Sendable {
        public var packetIdentifier: UInt16
        public var reasonCodes: [MQTTReasonCode]
        public var properties: MQTTProperties

        public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode] = [], properties: MQTTProperties = []) {
            self.packetIdentifier = packetIdentifier
            self.reasonCodes = reasonCodes
            self.properties = properties
        }
    }
}

extension MQTTPacket.Unsubscribe {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        var length = 2
        if version == .v5 { length += properties.encodedLength }
        for filter in topicFilters { length += 2 + filter.utf8.count }
        return length
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { try properties.write(to: &buffer) }
        for filter in topicFilters { try buffer.writeMQTTString(filter) }
    }

    static func read(
        from reader: inout MQTTPacketReader,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        let packetIdentifier = try reader.readPacketIdentifier()
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &reader, context: .unsubscribe) : []
        var filters: [String] = []
        while !reader.isAtEnd { filters.append(try reader.readString()) }
        guard !filters.isEmpty else { throw .noTopicFilters(.unsubscribe) }  // [MQTT-3.10.3-2]
        return Self(packetIdentifier: packetIdentifier, topicFilters: filters, properties: properties)
    }
}

extension MQTTPacket.UnsubAck {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        version == .v5 ? 2 + properties.encodedLength + reasonCodes.count : 2
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        buffer.writeInteger(packetIdentifier)
        guard version == .v5 else { return }
        try properties.write(to: &buffer)
        for code in reasonCodes { buffer.writeInteger(code.rawValue) }
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
        let properties = try MQTTProperties.read(from: &reader, context: .unsuback)
        var codes: [MQTTReasonCode] = []
        while !reader.isAtEnd {
            let code = try reader.readByte()
            guard MQTTReasonCode.isAllowed(code, in: .unsuback) else { throw .invalidReasonCode(code, in: .unsuback) }
            codes.append(MQTTReasonCode(rawValue: code))
        }
        guard !codes.isEmpty else { throw .noReasonCodes(.unsuback) }
        return Self(packetIdentifier: packetIdentifier, reasonCodes: codes, properties: properties)
    }
}
