import MQTTCore
import NIOConcurrencyHelpers
import NIOCore

/// The last retained message of each topic. Touched only by retained PUBLISHes and by
/// SUBSCRIBE, never by ordinary routing.
public final class RetainedStore: Sendable {
    private let messages = NIOLockedValueBox<[String: RoutedMessage]>([:])
    private let durable: (any BrokerStore)?

    public init(store: (any BrokerStore)? = nil) {
        self.durable = store
    }

    /// Sets the topic's retained message, or clears it for an empty payload. [MQTT-3.3.1-6]
    /// Returns whether the change went to the durable store (`$SYS` topics never do: the
    /// broker makes them anew).
    @discardableResult
    public func store(_ message: RoutedMessage) -> Bool {
        let durable = message.topic.hasPrefix("$SYS/") ? nil : self.durable
        return messages.withLockedValue { messages in
            // Under the lock, so that the store sees one topic's changes in their order.
            if message.payload.readableBytes == 0 {
                guard messages.removeValue(forKey: message.topic) != nil else { return false }
                durable?.append(.retainedCleared(topic: message.topic))
            } else {
                messages[message.topic] = message
                durable?.append(.retainedSet(message))
            }
            return durable != nil
        }
    }

    /// Puts back a retained message from the store at start-up.
    func restore(_ message: RoutedMessage) {
        messages.withLockedValue { $0[message.topic] = message }
    }

    public var count: Int { messages.withLockedValue { $0.count } }

    /// The retained messages a new subscription to `filter` receives.
    public func matching(filter: String) -> [RoutedMessage] {
        messages.withLockedValue { messages in
            messages.values.filter { MQTTTopic.matches(filter: filter, topic: $0.topic) }
        }
    }
}
