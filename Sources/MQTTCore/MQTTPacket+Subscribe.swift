import NIOCore

extension MQTTPacket {
    /// SUBSCRIBE (§3.8). Filters are checked for UTF-8 here; their wildcard syntax is the
    /// broker's to judge, so that a 5.0 client gets SUBACK 0x8F for that filter alone.
    public struct Subscribe: Equatable, Sendable {
        public var packetIdentifier: UInt16
        public var subscriptions: [Subscription]
        public var properties: MQTTProperties

        public init(packetIdentifier: UInt16, subscriptions: [Subscription], properties: MQTTProperties = []) {
            self.packetIdentifier = packetIdentifier
            self.subscriptions = subscriptions
            self.properties = properties
        }
    }

    public struct Subscription: Equatable, Sendable {
        public var topicFilter: String
        public var options: SubscriptionOptions

        public init(topicFilter: String, options: SubscriptionOptions = SubscriptionOptions()) {
            self.topicFilter = topicFilter
            self.options = options
        }
    }

    /// The subscription options byte (§3.8.3.1). 3.1.1 carries only the QoS.
    public struct SubscriptionOptions: Hashable, Sendable {
        public var qos: MQTTQoS
        public var noLocal: Bool
        public var retainAsPublished: Bool
        public var retainHandling: RetainHandling

        public init(
            qos: MQTTQoS = .atMostOnce,
            noLocal: Bool = false,
            retainAsPublished: Bool = false,
            retainHandling: RetainHandling = .sendOnSubscribe
        ) {
            self.qos = qos
            self.noLocal = noLocal
            self.retainAsPublished = retainAsPublished
            self.retainHandling = retainHandling
        }
    }

    public enum RetainHandling: UInt8, Sendable, Hashable, CaseIterable {
        case sendOnSubscribe = 0
        case sendOnNewSubscription = 1
        case doNotSend = 2
    }
}

extension MQTTPacket.SubscriptionOptions {
    /// The options byte as a SUBSCRIBE carries it (also how the broker's store keeps them).
    public func byte(version: MQTTProtocolVersion) -> UInt8 {
        guard version == .v5 else { return qos.rawValue }
        return qos.rawValue | (noLocal ? 0x04 : 0) | (retainAsPublished ? 0x08 : 0) | retainHandling.rawValue << 4
    }

    public init(byte: UInt8, version: MQTTProtocolVersion) throws(MQTTProtocolViolation) {
        let reservedMask: UInt8 = version == .v5 ? 0xC0 : 0xFC
        guard byte & reservedMask == 0 else { throw .invalidSubscriptionOptions(byte) }  // [MQTT-3.8.3-5]
        guard let qos = MQTTQoS(rawValue: byte & 0x03) else { throw .invalidQoS(byte & 0x03) }  // [MQTT-3-8.3-4]
        guard let retainHandling = MQTTPacket.RetainHandling(rawValue: (byte >> 4) & 0x03) else {
            throw .invalidSubscriptionOptions(byte)
        }
        self.init(
            qos: qos,
            noLocal: byte & 0x04 != 0,
            retainAsPublished: byte & 0x08 != 0,
            retainHandling: retainHandling
        )
    }
}

extension MQTTPacket.Subscribe {
    func bodyLength(version: MQTTProtocolVersion) -> Int {
        var length = 2
        if version == .v5 { length += properties.encodedLength }
        for subscription in subscriptions { length += 3 + subscription.topicFilter.utf8.count }
        return length
    }

    func writeBody(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTEncodingError) {
        buffer.writeInteger(packetIdentifier)
        if version == .v5 { try properties.write(to: &buffer) }
        for subscription in subscriptions {
            try buffer.writeMQTTString(subscription.topicFilter)
            buffer.writeInteger(subscription.options.byte(version: version))
        }
    }

    static func read(
        from reader: inout MQTTPacketReader,
        version: MQTTProtocolVersion
    ) throws(MQTTProtocolViolation) -> Self {
        let packetIdentifier = try reader.readPacketIdentifier()
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &reader, context: .subscribe) : []
        var subscriptions: [MQTTPacket.Subscription] = []
        while !reader.isAtEnd {
            let filter = try reader.readString()
            let options = try MQTTPacket.SubscriptionOptions(byte: try reader.readByte(), version: version)
            if options.noLocal && filter.hasPrefix(MQTTTopicFilter.sharePrefix) {
                throw .noLocalOnSharedSubscription  // [MQTT-3.8.3-4]
            }
            subscriptions.append(MQTTPacket.Subscription(topicFilter: filter, options: options))
        }
        guard !subscriptions.isEmpty else { throw .noTopicFilters(.subscribe) }  // [MQTT-3.8.3-3]
        return Self(packetIdentifier: packetIdentifier, subscriptions: subscriptions, properties: properties)
    }
}
