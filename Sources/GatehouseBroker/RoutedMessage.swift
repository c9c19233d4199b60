public import MQTTCore
public import NIOCore

/// An accepted PUBLISH on its way to subscribers: immutable and shared by every delivery.
public struct RoutedMessage: Sendable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    /// The 5.0 properties passed through to subscribers unchanged (payload format, content
    /// type, response topic, correlation data, user properties).
    public var forwardedProperties: MQTTProperties
    public var publisherClientID: String?
    /// When the Message Expiry Interval runs out; nil if it never does.
    public var expiresAt: NIODeadline?

    public init(
        topic: String,
        payload: ByteBuffer,
        qos: MQTTQoS,
        retain: Bool,
        forwardedProperties: MQTTProperties = [],
        publisherClientID: String? = nil,
        expiresAt: NIODeadline? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.forwardedProperties = forwardedProperties
        self.publisherClientID = publisherClientID
        self.expiresAt = expiresAt
    }

    /// The message as a client published it: Topic Alias and Subscription Identifiers are
    /// hop-by-hop and dropped; Message Expiry becomes a deadline. [MQTT-3.3.2-5]
    public init(publish: MQTTPacket.Publish, topic: String, publisherClientID: String?, now: NIODeadline) {
        var forwarded: [MQTTProperty] = []
        var expiresAt: NIODeadline?
        for property in publish.properties.items {
            switch property {
            case .payloadFormatIndicator, .contentType, .responseTopic, .correlationData, .userProperty:
                forwarded.append(property)
            case .messageExpiryInterval(let seconds):
                expiresAt = now + .seconds(Int64(seconds))
            default:
                break
            }
        }
        self.init(
            topic: topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            forwardedProperties: MQTTProperties(forwarded),
            publisherClientID: publisherClientID,
            expiresAt: expiresAt
        )
    }

    public func hasExpired(at now: NIODeadline) -> Bool {
        expiresAt.map { $0 <= now } ?? false
    }

    /// The PUBLISH a subscriber receives, with the remaining expiry. [MQTT-3.3.2-6]
    func packet(
        qos: MQTTQoS,
        retain: Bool,
        packetIdentifier: UInt16,
        duplicate: Bool,
        subscriptionIdentifiers: [UInt32],
        now: NIODeadline
    ) -> MQTTPacket.Publish {
        var properties = forwardedProperties
        if let expiresAt {
            let remaining = max(0, (expiresAt - now).nanoseconds / 1_000_000_000)
            properties.items.append(.messageExpiryInterval(UInt32(clamping: remaining)))
        }
        for identifier in subscriptionIdentifiers { properties.items.append(.subscriptionIdentifier(identifier)) }
        return MQTTPacket.Publish(
            topicName: topic,
            payload: payload,
            qos: qos,
            retain: retain,
            duplicate: duplicate,
            packetIdentifier: packetIdentifier,
            properties: properties
        )
    }
}
