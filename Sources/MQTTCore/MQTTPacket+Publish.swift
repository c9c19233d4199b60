public import NIOCore

extension MQTTPacket {
    /// PUBLISH (§3.3). The payload is a slice of the received buffer: no copy on decode.
    public struct Publish: Equatable, Sendable {
        public var topicName: String
        public var payload: ByteBuffer
        public var qos: MQTTQoS
        public var retain: Bool
        public var duplicate: Bool
        /// Present on the wire only for QoS 1 and 2; 0 for QoS 0.
        public var packetIdentifier: UInt16
        public var properties: MQTTProperties

        public init(
            topicName: String,
            payload: ByteBuffer,
            qos: MQTTQoS = .atMostOnce,
            retain: Bool = false,
            duplicate: Bool = false,
            packetIdentifier: UInt16 = 0,
            properties: MQTTProperties = []
        ) {
            self.topicName = topicName
            self.payload = payload
            self.qos = qos
            self.retain = retain
            self.duplicate = duplicate
            self.packetIdentifier = packetIdentifier
            self.properties = properties
        }
    }
}

extension MQTTPacket.Publish {
    var fixedHeaderFlags: UInt8 {
        (duplicate ? 0b1000 : 0) | qos.rawValue << 1 | (retain ? 1 : 0)
    }

    func bodyLength(version: MQTTProtocolVersion) -> Int {
        var length = 2 + topicName.utf8.count + payload.readableBytes
        if qos != .atMostOnce { length += 2 }
        if version == .v5 { length += properties.encodedLength }
        return length
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        try buffer.writeMQTTString(topicName)
        if qos != .atMostOnce { buffer.writeInteger(packetIdentifier) }
        if version == .v5 { try properties.write(to: &buffer) }
        buffer.writeImmutableBuffer(payload)
    }

    static func read(
        from reader: inout MQTTPacketReader,
        flags: UInt8,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        let qosBits = (flags >> 1) & 0b11
        guard let qos = MQTTQoS(rawValue: qosBits) else { throw .invalidQoS(qosBits) }  // [MQTT-3.3.1-4]
        let duplicate = flags & 0b1000 != 0
        if duplicate && qos == .atMostOnce { throw .duplicateFlagOnQoS0 }  // [MQTT-3.3.1-2]
        let topicName = try reader.readString()
        // Scanned as contiguous bytes where the string has them (a decoded one always does):
        // stepping a String's UTF-8 view byte by byte cost a fortieth of a PUBLISH.
        let isWildcard = { (byte: UInt8) in byte == UInt8(ascii: "+") || byte == UInt8(ascii: "#") }
        if topicName.utf8.withContiguousStorageIfAvailable({ $0.contains(where: isWildcard) })
            ?? topicName.utf8.contains(where: isWildcard)
        {
            throw .wildcardInTopicName  // [MQTT-3.3.2-2]
        }
        let packetIdentifier = qos == .atMostOnce ? 0 : try reader.readPacketIdentifier()
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &reader, context: .publish) : []
        // An empty topic name is only a Topic Alias reference. [MQTT-3.3.2-1], [MQTT-3.3.2-8]
        if topicName.isEmpty && properties.topicAlias == nil { throw .emptyTopicName }
        return Self(
            topicName: topicName,
            payload: reader.readRest(),
            qos: qos,
            retain: flags & 1 != 0,
            duplicate: duplicate,
            packetIdentifier: packetIdentifier,
            properties: properties
        )
    }
}
