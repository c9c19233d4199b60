import GatehouseAuth
import MQTTCore
import NIOCore
import NIOEmbedded
import Testing

@testable import GatehouseBroker

private final class CountingConnection: SessionConnection, @unchecked Sendable {
    let eventLoop: any EventLoop = EmbeddedEventLoop()
    var wakes = 0
    func sessionHasOutput() { wakes += 1 }
    func disconnect(reason: MQTTReasonCode) {}
}

/// What a publisher's read cycle leaves for its end (QoS 0 to few clients) and what it reuses
/// from the last PUBLISH (the topic's match), against the broker's real router.
@Suite("routing within a read cycle")
struct ReadCycleRoutingTests {
    private let principal = Principal(identityID: "i", username: "u", clientIdentifier: "c", tenant: "t", roles: [])
    private let broker = makeBroker()

    private func connectedSession(_ clientID: String, filter: String, qos: MQTTQoS = .atLeastOnce) -> (
        Session, CountingConnection
    ) {
        let session = Session(clientID: clientID, principal: principal, expiryInterval: 0, maximumQueuedMessages: 100)
        let connection = CountingConnection()
        _ = session.attach(connection, principal: principal, receiveMaximum: 100, expiryInterval: 0)
        _ = broker.subscribe(
            session, filter: MQTTTopicFilter(uncheckedFilter: filter), options: .init(qos: qos), identifier: nil)
        return (session, connection)
    }

    private func message(_ topic: String, _ text: String, qos: MQTTQoS) -> RoutedMessage {
        RoutedMessage(topic: topic, payload: ByteBuffer(string: text), qos: qos, retain: false)
    }

    private func payloads(_ session: Session) -> [String] {
        session.takeOutgoing(now: .now()).compactMap {
            if case .publish(let queued, _, _) = $0 { String(buffer: queued.message.payload) } else { nil }
        }
    }

    @Test("QoS 0 waits for the end of the cycle, one wake per session; a QoS 1 message keeps its place after it")
    func waitingQoS0KeepsOrder() {
        let (session, connection) = connectedSession("sub", filter: "a/+")
        var batch = DeliveryBatch()
        var matches = MatchCache()
        for text in ["0a", "0b"] {
            #expect(
                broker.publish(
                    message("a/1", text, qos: .atMostOnce), topic: TopicLevels("a/1"), matches: &matches, into: &batch)
                    == 1)
        }
        #expect(session.queuedCount == 0)
        broker.publish(
            message("a/1", "1c", qos: .atLeastOnce), topic: TopicLevels("a/1"), matches: &matches, into: &batch)
        #expect(session.queuedCount == 3)
        broker.publish(
            message("a/1", "0d", qos: .atMostOnce), topic: TopicLevels("a/1"), matches: &matches, into: &batch)
        #expect(session.queuedCount == 3)
        batch.take().wake()
        #expect(connection.wakes == 1)
        #expect(payloads(session) == ["0a", "0b", "1c", "0d"])
    }

    @Test("a fan-out past the waiting limit enqueues at once")
    func fanOutEnqueuesAtOnce() {
        let subscribers = (0...DeliveryBatch.waitingClientsLimit).map { connectedSession("s\($0)", filter: "f") }
        var batch = DeliveryBatch()
        var matches = MatchCache()
        let reached = broker.publish(
            message("f", "x", qos: .atMostOnce), topic: TopicLevels("f"), matches: &matches, into: &batch)
        #expect(reached == subscribers.count)
        #expect(subscribers.allSatisfy { $0.0.queuedCount == 1 })
        batch.take().wake()
        #expect(subscribers.allSatisfy { $0.1.wakes == 1 })
    }

    @Test("many sessions waiting in one cycle are enqueued in groups, none lost or reordered")
    func manyWaitingSessions() {
        let count = DeliveryBatch.waitingSessionsLimit * 2 + 3
        let subscribers = (0..<count).map { connectedSession("s\($0)", filter: "d/\($0)") }
        var batch = DeliveryBatch()
        var matches = MatchCache()
        for round in 0..<2 {
            for index in 0..<count {
                broker.publish(
                    message("d/\(index)", "\(round)", qos: .atMostOnce), topic: TopicLevels("d/\(index)"),
                    matches: &matches, into: &batch)
            }
        }
        // Each time 16 sessions wait, they go in: by now the first session holds both rounds,
        // the last only round 0 (its round 1 still waits for the cycle's end).
        #expect(subscribers.first?.0.queuedCount == 2)
        #expect(subscribers.last?.0.queuedCount == 1)
        batch.take().wake()
        for (session, _) in subscribers { #expect(payloads(session) == ["0", "1"]) }
    }

    @Test("a cached match is used only while the index is unchanged: a new subscriber gets the next message")
    func cachedMatchFollowsSubscriptions() {
        let (first, _) = connectedSession("first", filter: "t/#")
        var batch = DeliveryBatch()
        var matches = MatchCache()
        #expect(
            broker.publish(
                message("t/x", "1", qos: .atLeastOnce), topic: TopicLevels("t/x"), matches: &matches, into: &batch) == 1
        )
        let (second, _) = connectedSession("second", filter: "t/+")
        #expect(
            broker.publish(
                message("t/x", "2", qos: .atLeastOnce), topic: TopicLevels("t/x"), matches: &matches, into: &batch) == 2
        )
        _ = broker.unsubscribe(first, filter: "t/#")
        #expect(
            broker.publish(
                message("t/x", "3", qos: .atLeastOnce), topic: TopicLevels("t/x"), matches: &matches, into: &batch) == 1
        )
        // Another topic from the same publisher is matched afresh, not served from the cache.
        #expect(
            broker.publish(
                message("u", "4", qos: .atLeastOnce), topic: TopicLevels("u"), matches: &matches, into: &batch) == 0)
        batch.take().wake()
        #expect(payloads(first) == ["1", "2"])
        #expect(payloads(second) == ["2", "3"])
    }

    @Test("a waiting delivery is still read-checked when it is enqueued")
    func waitingDeliveryIsReadChecked() {
        let (session, _) = connectedSession("sub", filter: "#")
        var batch = DeliveryBatch()
        var matches = MatchCache()
        for topic in ["ok", "forbidden/x", "ok"] {
            broker.publish(
                message(topic, topic, qos: .atMostOnce), topic: TopicLevels(topic), matches: &matches, into: &batch)
        }
        batch.take().wake()
        #expect(payloads(session) == ["ok", "ok"])
    }
}
