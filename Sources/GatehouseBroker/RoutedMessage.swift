public import MQTTCore
public import NIOCore

/// An accepted PUBLISH on its way to subscribers: immutable and shared by every delivery.
///
/// What the publisher sent sits behind one reference, so that each copy (into every
/// subscriber's queue, out again to be written) counts one reference instead of one per
/// string, buffer and property list. Only the expiry is ever set after routing starts (a Will's
/// counts from its publication), and setting it makes a new content object.
public struct RoutedMessage: Sendable {
    private struct Fields: Sendable {
        let topic: String
        let payload: ByteBuffer
        let qos: MQTTQoS
        let retain: Bool
        let forwardedProperties: MQTTProperties
        let publisherClientID: String?
        var expiresAt: NIODeadline?
    }

    private final class Content: Sendable {
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var content: Content

    public var topic: String { content.fields.topic }
    public var payload: ByteBuffer { content.fields.payload }
    public var qos: MQTTQoS { content.fields.qos }
    public var retain: Bool { content.fields.retain }
    /// The 5.0 properties passed through to subscribers unchanged (payload format, content
    /// type, response topic, correlation data, user properties).
    public var forwardedProperties: MQTTProperties { content.fields.forwardedProperties }
    public var publisherClientID: String? { content.fields.publisherClientID }
    /// When the Message Expiry Interval runs out; nil if it never does.
    public var expiresAt: NIODeadline? {
        get { content.fields.expiresAt }
        set {
            var fields = content.fields
            fields.expiresAt = newValue
            content = Content(fields)
        }
    }
    /// The store's id once a persistent session holds it; nil while only memory does.
    public internal(set) var storedID: StoredMessageID?
    /// The QoS 0, non-retained wire forms, encoded once when the message fans out, so that
    /// subscribers whose bytes are equal share them instead of encoding again.
    var sharedForms: SharedWireForms?

    public init(
        topic: String,
        payload: ByteBuffer,
        qos: MQTTQoS,
        retain: Bool,
        forwardedProperties: MQTTProperties = [],
        publisherClientID: String? = nil,
        expiresAt: NIODeadline? = nil
    ) {
        content = Content(
            Fields(
                topic: topic, payload: payload, qos: qos, retain: retain, forwardedProperties: forwardedProperties,
                publisherClientID: publisherClientID, expiresAt: expiresAt))
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

    /// The message with the bytes every plain QoS 0 delivery shares already encoded; unchanged
    /// when no two deliveries can be equal (an expiry gives each its own remaining time).
    func encodingSharedForms() -> RoutedMessage {
        guard expiresAt == nil else { return self }
        var copy = self
        let plain = packet(
            qos: .atMostOnce, retain: false, packetIdentifier: 0, duplicate: false, subscriptionIdentifiers: [],
            now: .now())
        guard let v311 = try? MQTTPacket.publish(plain).encoded(version: .v311),
            let v5 = try? MQTTPacket.publish(plain).encoded(version: .v5)
        else { return self }
        copy.sharedForms = SharedWireForms(v311: v311, v5: v5)
        return copy
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

/// The bytes of one message's plain QoS 0 PUBLISH in each protocol version. Immutable.
final class SharedWireForms: Sendable {
    let v311: ByteBuffer
    let v5: ByteBuffer

    init(v311: ByteBuffer, v5: ByteBuffer) {
        self.v311 = v311
        self.v5 = v5
    }

    func bytes(for version: MQTTProtocolVersion) -> ByteBuffer { version == .v5 ? v5 : v311 }
}

/// A Will until it is published. Its Message Expiry Interval counts from publication, not
/// from the CONNECT that carried it, so it is kept as an interval (MQTT 5.0, 3.1.3.2).
public struct WillMessage: Sendable {
    /// The message to publish, without an expiry.
    public var message: RoutedMessage
    public var expiryInterval: UInt32?

    public init(message: RoutedMessage, expiryInterval: UInt32?) {
        var message = message
        message.expiresAt = nil
        self.message = message
        self.expiryInterval = expiryInterval
    }

    public init(_ will: MQTTPacket.Will, publisherClientID: String) {
        let publish = MQTTPacket.Publish(
            topicName: will.topic, payload: will.payload, qos: will.qos, retain: will.retain,
            properties: will.properties)
        self.init(
            message: RoutedMessage(
                publish: publish, topic: will.topic, publisherClientID: publisherClientID, now: .now()),
            expiryInterval: will.properties.messageExpiryInterval)
    }

    public var topic: String { message.topic }

    /// The message as published at `now`.
    public func published(at now: NIODeadline) -> RoutedMessage {
        var published = message
        published.expiresAt = expiryInterval.map { now + .seconds(Int64($0)) }
        return published
    }
}
