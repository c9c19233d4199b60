import GatehouseAuth
import MQTTCore
import NIOCore
import NIOEmbedded
import Testing

@testable import GatehouseBroker

private final class RecordingConnection: SessionConnection, @unchecked Sendable {
    let eventLoop: any EventLoop = EmbeddedEventLoop()
    var wakes = 0
    var disconnects: [MQTTReasonCode] = []
    func sessionHasOutput() { wakes += 1 }
    func disconnect(reason: MQTTReasonCode) { disconnects.append(reason) }
}

@Suite("session")
struct SessionTests {
    private let principal = Principal(identityID: "i", username: "u", clientIdentifier: "c", tenant: "t", roles: [])

    private func message(_ topic: String = "t", qos: MQTTQoS) -> QueuedMessage {
        QueuedMessage(
            message: RoutedMessage(topic: topic, payload: ByteBuffer(string: "x"), qos: qos, retain: false), qos: qos,
            retain: false, subscriptionIdentifiers: [])
    }

    private func identifiers(_ outgoing: [OutgoingPacket]) -> [UInt16] {
        outgoing.compactMap { if case .publish(_, let id, _) = $0 { id } else { nil } }
    }

    @Test("the in-flight window never exceeds the client's receive maximum")
    func inflightWindow() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 0, maximumQueuedMessages: 100)
        let connection = RecordingConnection()
        _ = session.attach(connection, principal: principal, receiveMaximum: 2, expiryInterval: 0)
        for _ in 0..<5 { _ = session.enqueue(message(qos: .atLeastOnce)) }
        let first = identifiers(session.takeOutgoing(now: .now()))
        #expect(first.count == 2)
        #expect(session.takeOutgoing(now: .now()).isEmpty)
        #expect(session.completeOutbound(first[0]))
        #expect(identifiers(session.takeOutgoing(now: .now())).count == 1)
        #expect(session.queuedCount == 2)
    }

    @Test("a connection is woken once per drain, not once per message")
    func coalescedWakes() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 0, maximumQueuedMessages: 100)
        let connection = RecordingConnection()
        _ = session.attach(connection, principal: principal, receiveMaximum: 10, expiryInterval: 0)
        #expect(session.enqueue(message(qos: .atMostOnce)) === connection)
        #expect(session.enqueue(message(qos: .atMostOnce)) == nil)
        _ = session.takeOutgoing(now: .now())
        #expect(session.enqueue(message(qos: .atMostOnce)) === connection)
    }

    @Test("in-flight messages are resent with DUP to the next connection, PUBREL after PUBREC")
    func resendOnReconnect() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 60, maximumQueuedMessages: 100)
        _ = session.attach(RecordingConnection(), principal: principal, receiveMaximum: 10, expiryInterval: 60)
        _ = session.enqueue(message(qos: .atLeastOnce))
        _ = session.enqueue(message(qos: .exactlyOnce))
        let sent = identifiers(session.takeOutgoing(now: .now()))
        #expect(session.releaseOutbound(sent[1]))
        _ = session.attach(RecordingConnection(), principal: principal, receiveMaximum: 10, expiryInterval: 60)
        let resent = session.takeOutgoing(now: .now())
        #expect(resent.count == 2)
        guard case .publish(_, let id, let duplicate) = resent[0], case .pubrel(let released) = resent[1] else {
            Issue.record("expected PUBLISH then PUBREL, got \(resent)")
            return
        }
        #expect(id == sent[0] && duplicate && released == sent[1])
    }

    @Test("a full queue drops QoS 0 first, and counts every drop (as queue_full for the broker)")
    func queueLimit() {
        let statistics = BrokerStatistics()
        let session = Session(
            clientID: "c", principal: principal, expiryInterval: 60, maximumQueuedMessages: 2, statistics: statistics)
        _ = session.attach(RecordingConnection(), principal: principal, receiveMaximum: 1, expiryInterval: 60)
        _ = session.enqueue(message("q0", qos: .atMostOnce))
        _ = session.enqueue(message("q1", qos: .atLeastOnce))
        _ = session.enqueue(message("q1b", qos: .atLeastOnce))  // pushes out the QoS 0 message
        _ = session.enqueue(message("late", qos: .atMostOnce))  // dropped: the queue is full
        #expect(session.queuedCount == 2)
        #expect(session.droppedCount == 2)
        #expect(
            statistics.snapshot.droppedByReason == [
                .queueFull: 2, .expired: 0, .noSubscribers: 0, .aclRefused: 0, .memoryBudget: 0,
            ])
    }

    @Test("offline, only QoS 1 and 2 are queued")
    func offlineQueue() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 60, maximumQueuedMessages: 10)
        _ = session.enqueue(message(qos: .atMostOnce))
        _ = session.enqueue(message(qos: .atLeastOnce))
        #expect(session.queuedCount == 1)
    }

    @Test("an inbound QoS 2 packet identifier is routed once until released; a resend is never over the limit")
    func inboundQoS2() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 0, maximumQueuedMessages: 10)
        #expect(session.receiveInboundQoS2(7, limit: 1) == .new)
        #expect(session.receiveInboundQoS2(7, limit: 1) == .duplicate)
        #expect(session.receiveInboundQoS2(8, limit: 1) == .overLimit)
        #expect(session.releaseInboundQoS2(7))
        #expect(!session.releaseInboundQoS2(7))
        #expect(session.receiveInboundQoS2(7, limit: 1) == .new)
    }

    @Test("packet identifiers skip those still in flight and never use 0")
    func packetIdentifiers() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 0, maximumQueuedMessages: 70_000)
        _ = session.attach(RecordingConnection(), principal: principal, receiveMaximum: 65_535, expiryInterval: 0)
        for _ in 0..<65_535 { _ = session.enqueue(message(qos: .atLeastOnce)) }
        let ids = identifiers(session.takeOutgoing(now: .now()))
        #expect(ids.count == 65_535 && !ids.contains(0) && Set(ids).count == 65_535)
    }

    @Test("expired messages are not sent")
    func expiry() {
        let session = Session(clientID: "c", principal: principal, expiryInterval: 0, maximumQueuedMessages: 10)
        _ = session.attach(RecordingConnection(), principal: principal, receiveMaximum: 10, expiryInterval: 0)
        var expired = message(qos: .atLeastOnce)
        expired.message.expiresAt = .now() - .seconds(1)
        _ = session.enqueue(expired)
        #expect(session.takeOutgoing(now: .now()).isEmpty)
    }

    @Test("a delivery the subscriber may not read is refused and not queued")
    func readAuthorization() {
        struct DenyAll: Authorizer {
            func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision { .reject }
        }
        let session = Session(clientID: "c", principal: principal, expiryInterval: 0, maximumQueuedMessages: 10)
        let connection = RecordingConnection()
        _ = session.attach(connection, principal: principal, receiveMaximum: 10, expiryInterval: 0)
        let refused = session.enqueue(message(qos: .atLeastOnce), readPermittedBy: DenyAll())
        #expect(!refused.accepted && refused.wake == nil)
        #expect(session.queuedCount == 0)
        let allowed = session.enqueue(message(qos: .atLeastOnce), readPermittedBy: AllowAllAuthorizer())
        #expect(allowed.accepted && allowed.wake === connection)
    }
}

@Suite("session after an ACL reload")
struct SessionReloadTests {
    struct RejectSecret: Authorizer {
        func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision {
            topic.hasPrefix("secret") ? .reject : .accept
        }
    }

    @Test("queued messages the principal may no longer read are dropped; the rest stay in order")
    func dropUnreadable() {
        let principal = Principal(identityID: "i", username: "u", clientIdentifier: "c", tenant: "t", roles: [])
        let session = Session(clientID: "c", principal: principal, expiryInterval: 60, maximumQueuedMessages: 10)
        for topic in ["a", "secret/1", "b", "secret/2"] {
            let message = RoutedMessage(
                publish: .init(topicName: topic, payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 1),
                topic: topic, publisherClientID: "p", now: .now())
            _ = session.enqueue(
                QueuedMessage(message: message, qos: .atLeastOnce, retain: false, subscriptionIdentifiers: []),
                readPermittedBy: AllowAllAuthorizer())
        }
        #expect(session.queuedCount == 4)
        #expect(session.dropUnreadable(by: RejectSecret()) == 2)
        #expect(session.queuedCount == 2)
    }
}

@Suite("publish rate limit")
struct PublishRateLimitTests {
    @Test("messages and bytes: a second's worth at once, then the rate as time passes")
    func buckets() throws {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let limit = try #require(PublishRateLimit(messagesPerSecond: 10, bytesPerSecond: 1_000, now: start))
        /// How many of `count` messages of `size` bytes at `now` are admitted.
        func admitted(_ count: Int, size: Int = 10, at now: NIODeadline) -> Int {
            (0..<count).reduce(0) { total, _ in total + (limit.admit(size: size, now: now) ? 1 : 0) }
        }
        #expect(admitted(11, at: start) == 10)
        #expect(admitted(6, at: start + .milliseconds(500)) == 5)
        // 1,000 bytes a second: one large message drains the byte bucket alone.
        let later = start + .seconds(3)
        #expect(admitted(1, size: 1_000, at: later) == 1)
        #expect(admitted(1, size: 1, at: later) == 0)
        #expect(PublishRateLimit(messagesPerSecond: 0, bytesPerSecond: 0, now: start) == nil)
    }
}
