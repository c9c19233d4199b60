import MQTTCore
import NIOConcurrencyHelpers
import NIOCore

/// The last retained message of each topic. Touched only by retained PUBLISHes and by
/// SUBSCRIBE, never by ordinary routing.
public final class RetainedStore: Sendable {
    private let messages = NIOLockedValueBox<[String: RoutedMessage]>([:])

    public init() {}

    /// Sets the topic's retained message, or clears it for an empty payload. [MQTT-3.3.1-6]
    public func store(_ message: RoutedMessage) {
        messages.withLockedValue { messages in
            if message.payload.readableBytes == 0 {
                messages[message.topic] = nil
            } else {
                messages[message.topic] = message
            }
        }
    }

    public var count: Int { messages.withLockedValue { $0.count } }

    /// The retained messages a new subscription to `filter` receives.
    public func matching(filter: String) -> [RoutedMessage] {
        messages.withLockedValue { messages in
            messages.values.filter { MQTTTopic.matches(filter: filter, topic: $0.topic) }
        }
    }
}
