import GatehouseAuth
import MQTTCore
public import NIOCore

/// The `$SYS/broker/…` publisher: the statistics as retained QoS 0 messages, republished on a timer.
extension Broker {
    /// The `$SYS/broker/…` topics and their current values, named as Mosquitto names them.
    public func systemTopics(version: String, now: NIODeadline = .now()) -> [(topic: String, value: String)] {
        let counts = statistics.snapshot
        let uptime = (now - statistics.startedAt).nanoseconds / 1_000_000_000
        return [
            ("$SYS/broker/version", "gatehouse \(version)"),
            ("$SYS/broker/uptime", "\(uptime) seconds"),
            ("$SYS/broker/clients/connected", "\(counts.clientsConnected)"),
            ("$SYS/broker/messages/received", "\(counts.messagesReceived)"),
            ("$SYS/broker/messages/sent", "\(counts.messagesSent)"),
            ("$SYS/broker/messages/dropped", "\(counts.messagesDropped)"),
            ("$SYS/broker/bytes/received", "\(counts.bytesReceived)"),
            ("$SYS/broker/bytes/sent", "\(counts.bytesSent)"),
            ("$SYS/broker/subscriptions/count", "\(subscriptions.snapshot.count)"),
            ("$SYS/broker/retained messages/count", "\(retained.count)"),
            ("$SYS/broker/acl/refused", "\(counts.authorizationRejections)"),
            ("$SYS/broker/acl/reload-failures", "\(counts.aclReloadFailures)"),
        ]
    }

    /// Publishes the `$SYS` topics as retained QoS 0 messages, so new subscribers see the
    /// latest values at once.
    public func publishSystemTopics(version: String) {
        var batch = DeliveryBatch()
        let now = NIODeadline.now()
        for (topic, value) in systemTopics(version: version, now: now) {
            let message = RoutedMessage(
                topic: topic, payload: ByteBuffer(string: value), qos: .atMostOnce, retain: true)
            publish(message, topic: TopicLevels(topic), into: &batch)
        }
        batch.wake()
    }

    /// Publishes the `$SYS` topics every `interval` on `eventLoop` until the returned task is
    /// cancelled.
    public func startSystemTopics(
        version: String,
        interval: TimeAmount,
        on eventLoop: any EventLoop
    ) -> RepeatedTask {
        eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { [self] _ in
            publishSystemTopics(version: version)
        }
    }
}
