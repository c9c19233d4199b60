import Foundation
import GatehouseAuth
import Logging
import MQTTCore
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import GatehouseBroker

/// Keeps every change in order and calls each `whenDurable` at once: what a store receives,
/// without a disk.
final class RecordingStore: BrokerStore, Sendable {
    private let recorded = NIOLockedValueBox<[StoreChange]>([])
    var changes: [StoreChange] { recorded.withLockedValue { $0 } }
    func append(_ change: StoreChange) { recorded.withLockedValue { $0.append(change) } }
    /// The changes of each `append(contentsOf:)`, as they came.
    let groups = NIOLockedValueBox<[[StoreChange]]>([])
    func append(contentsOf changes: [StoreChange]) {
        groups.withLockedValue { $0.append(changes) }
        recorded.withLockedValue { $0.append(contentsOf: changes) }
    }
    func currentTicket() -> UInt64 { 1 }
    func whenDurable(
        _ ticket: UInt64, on eventLoop: any EventLoop, urgent: Bool, _ body: @escaping @Sendable () -> Void
    ) {
        eventLoop.execute(body)
    }
    /// What `loadBacklog` hands back, by client id, and which backlogs were asked for.
    let backlogs = NIOLockedValueBox<[String: [RestoredBrokerState.Delivery]]>([:])
    let backlogReads = NIOLockedValueBox<[String]>([])
    /// How many of the next backlog reads fail.
    let failingBacklogReads = NIOLockedValueBox(0)
    struct ReadFailure: Error {}
    func loadBacklog(
        of clientID: String, _ backlog: StoredBacklog, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (Result<[RestoredBrokerState.Delivery], any Error>) -> Void
    ) {
        backlogReads.withLockedValue { $0.append(clientID) }
        let deliveries = backlogs.withLockedValue { $0[clientID] ?? [] }
        let fails = failingBacklogReads.withLockedValue { count in
            defer { count = max(0, count - 1) }
            return count > 0
        }
        eventLoop.execute { body(fails ? .failure(ReadFailure()) : .success(deliveries)) }
    }
}

@Suite("broker and its store")
struct BrokerStoreTests {
    private func broker(store: RecordingStore, maximumStoredBytes: Int = 0) -> Broker {
        var configuration = BrokerConfiguration()
        configuration.maximumStoredBytes = maximumStoredBytes
        return Broker(
            configuration: configuration, authenticator: TestAuthenticator(), authorizer: TestAuthorizer(),
            store: store, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    private func kinds(_ changes: [StoreChange]) -> [String] {
        changes.map { change in
            switch change {
            case .sessionOpened: "opened"
            case .sessionDetached: "detached"
            case .sessionDeleted: "deleted"
            case .subscriptionSaved(_, let filter, _, _): "subscribed \(filter)"
            case .messageSaved: "message"
            case .messageRouted: "routed"
            case .deliveryQueued: "queued"
            case .deliverySent: "sent"
            case .deliveryDeleted: "acknowledged"
            default: "other"
            }
        }
    }

    private func publish(_ publisher: TestConnection, _ topic: String, id: UInt16) async throws {
        try await publisher.send(
            .publish(
                .init(
                    topicName: topic, payload: ByteBuffer(string: "0123456789"), qos: .atLeastOnce, packetIdentifier: id
                )))
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: id)))
    }

    @Test("a persistent session's life reaches the store in order; a clean session's never does")
    func changesInOrder() async throws {
        let store = RecordingStore()
        let broker = broker(store: store)
        let clean = try await TestConnection(broker: broker)
        try await clean.connect(clientID: "clean")
        _ = try await clean.subscribe("jobs/#")
        #expect(store.changes.isEmpty)

        let durable = try await TestConnection(broker: broker)
        try await durable.connect(clientID: "d", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        _ = try await durable.subscribe("jobs/#")
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        try await publish(publisher, "jobs/1", id: 1)
        _ = try await clean.receive()
        guard case .publish(let delivered) = try await durable.receive() else { throw TestFailure("expected PUBLISH") }
        try await durable.send(.puback(.init(packetIdentifier: delivered.packetIdentifier)))
        try await durable.send(.disconnect(.init(properties: [.sessionExpiryInterval(0)])))
        try await durable.waitUntilClosed()
        #expect(
            kinds(store.changes) == [
                "opened", "subscribed jobs/#", "message", "queued", "routed", "sent", "acknowledged", "deleted",
            ])
    }

    @Test("PUBACKs read together complete together: one lock, one store append, the window refilled")
    func acknowledgementsOfOneRead() async throws {
        let store = RecordingStore()
        let broker = broker(store: store)
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(
            clientID: "d", cleanStart: false, properties: [.sessionExpiryInterval(300), .receiveMaximum(2)])
        _ = try await subscriber.subscribe("jobs/#")
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        for id in UInt16(1)...4 { try await publish(publisher, "jobs/\(id)", id: id) }
        var identifiers: [UInt16] = []
        for _ in 0..<2 {
            guard case .publish(let delivered) = try await subscriber.receive() else {
                throw TestFailure("expected PUBLISH")
            }
            identifiers.append(delivered.packetIdentifier)
        }
        try await subscriber.expectSilence()  // the window of 2 is full
        var bytes = ByteBuffer()
        for identifier in identifiers {
            var one = try MQTTPacket.puback(.init(packetIdentifier: identifier)).encoded(version: .v5)
            bytes.writeBuffer(&one)
        }
        try await subscriber.sendBytes(Array(bytes.readableBytesView))
        var topics: [String] = []
        for _ in 0..<2 {
            guard case .publish(let delivered) = try await subscriber.receive() else {
                throw TestFailure("expected PUBLISH")
            }
            topics.append(delivered.topicName)
        }
        #expect(topics == ["jobs/3", "jobs/4"])
        let deletions = store.groups.withLockedValue { groups in
            groups.map { group in group.filter { if case .deliveryDeleted = $0 { true } else { false } }.count }
        }
        #expect(deletions.contains(2), "the two acknowledgements reached the store in one append: \(deletions)")
        #expect(kinds(store.changes).filter { $0 == "acknowledged" }.count == 2)
    }

    @Test("past max_stored_bytes new deliveries to persistent sessions are dropped and counted; acks free the room")
    func storedBytesLimit() async throws {
        let store = RecordingStore()
        let size = 10 + "jobs/1".utf8.count + 96
        let broker = broker(store: store, maximumStoredBytes: 3 * size)
        let offline = try await TestConnection(broker: broker)
        try await offline.connect(clientID: "d", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        _ = try await offline.subscribe("jobs/#")
        try await offline.send(.disconnect(.init()))
        try await offline.waitUntilClosed()
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        for id in UInt16(1)...5 { try await publish(publisher, "jobs/1", id: id) }
        let session = try #require(broker.session(clientID: "d"))
        #expect(session.queuedCount == 3 && session.droppedCount == 2)
        #expect(broker.storage?.bytesStored == 3 * size)

        let back = try await TestConnection(broker: broker)
        try await back.connect(clientID: "d", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        for _ in 0..<3 {
            guard case .publish(let queued) = try await back.receive() else { throw TestFailure("expected PUBLISH") }
            try await back.send(.puback(.init(packetIdentifier: queued.packetIdentifier)))
        }
        try await back.expectSilence()
        #expect(broker.storage?.bytesStored == 0)
    }
}

extension BrokerStoreTests {
    private func storedDelivery(_ sequence: UInt64, _ topic: String, sent packetIdentifier: UInt16? = nil)
        -> RestoredBrokerState.Delivery
    {
        RestoredBrokerState.Delivery(
            sequence: sequence, messageID: sequence + 100,
            message: RoutedMessage(
                topic: topic, payload: ByteBuffer(string: "0123456789"), qos: .atLeastOnce, retain: false),
            delivery: StoredDelivery(qos: .atLeastOnce, retain: false, subscriptionIdentifiers: []),
            state: packetIdentifier == nil ? .queued : .sent, packetIdentifier: packetIdentifier ?? 0)
    }

    /// Restores one persistent session of the test authenticator's anonymous identity, subscribed
    /// to `jobs/#`, its queue left in the store.
    private func restoreSession(_ clientID: String, into broker: Broker, backlog: StoredBacklog) {
        let principal = Principal(
            identityID: "anonymous", username: "anonymous", clientIdentifier: clientID, tenant: "t", roles: [])
        broker.restore(
            RestoredBrokerState(sessions: [
                .init(
                    clientID: clientID, principal: principal, expiryInterval: 300,
                    detachedAt: Int64(Date().timeIntervalSince1970),
                    subscriptions: [.init(filter: "jobs/#", options: .init(qos: .atLeastOnce), identifier: nil)],
                    backlog: backlog)
            ]), on: NIOAsyncTestingEventLoop())
    }

    @Test(
        "a restored session's stored messages are read when its client returns: in flight with DUP, then queued, then what came since start-up; unreadable ones dropped"
    )
    func backlogReadOnReturn() async throws {
        let store = RecordingStore()
        let broker = broker(store: store)
        store.backlogs.withLockedValue {
            $0["d"] = [
                storedDelivery(3, "jobs/a", sent: 7), storedDelivery(4, "jobs/b"), storedDelivery(5, "forbidden/x"),
            ]
        }
        restoreSession("d", into: broker, backlog: StoredBacklog(count: 3, bytes: 999, lastSequence: 5))
        let session = try #require(broker.session(clientID: "d"))
        #expect(session.queuedCount == 3 && broker.storage?.bytesStored == 999)

        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        try await publish(publisher, "jobs/c", id: 1)
        #expect(session.queuedCount == 4 && store.backlogReads.withLockedValue { $0 }.isEmpty)
        let queuedSince = store.changes.compactMap { change -> UInt64? in
            if case .deliveryQueued(_, let sequence, _, _) = change { return sequence }
            return nil
        }
        #expect(queuedSince == [6], "sequences go on after the stored ones")

        let back = try await TestConnection(broker: broker)
        let connack = try await back.connect(
            clientID: "d", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        #expect(connack.sessionPresent)
        var received: [String] = []
        for _ in 0..<3 {
            guard case .publish(let delivered) = try await back.receive() else { throw TestFailure("expected PUBLISH") }
            received.append("\(delivered.topicName)\(delivered.duplicate ? " dup \(delivered.packetIdentifier)" : "")")
            try await back.send(.puback(.init(packetIdentifier: delivered.packetIdentifier)))
        }
        try await back.expectSilence()
        #expect(received == ["jobs/a dup 7", "jobs/b", "jobs/c"])
        #expect(store.backlogReads.withLockedValue { $0 } == ["d"])
        let deleted = store.changes.compactMap { change -> UInt64? in
            if case .deliveryDeleted(_, let sequence) = change { return sequence }
            return nil
        }
        #expect(deleted.sorted() == [3, 4, 5, 6], "the unreadable one is dropped from the store too")
        #expect(broker.storage?.bytesStored == 0, "the estimate is replaced by the exact sizes, then released")
    }

    @Test("a failed read of the stored messages is retried while the client stays connected")
    func backlogReadRetried() async throws {
        let store = RecordingStore()
        let broker = broker(store: store)
        store.backlogs.withLockedValue { $0["d"] = [storedDelivery(0, "jobs/a")] }
        store.failingBacklogReads.withLockedValue { $0 = 1 }
        restoreSession("d", into: broker, backlog: StoredBacklog(count: 1, bytes: 0, lastSequence: 0))
        let back = try await TestConnection(broker: broker)
        try await back.connect(clientID: "d", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        try await back.expectSilence()
        #expect(store.backlogReads.withLockedValue { $0 } == ["d"], "one read, failed: nothing is sent")
        // The testing loop runs its timers only when its clock is moved.
        await back.channel.testingEventLoop.advanceTime(by: .seconds(1))
        guard case .publish(let delivered) = try await back.receive() else { throw TestFailure("expected PUBLISH") }
        #expect(delivered.topicName == "jobs/a")
        #expect(store.backlogReads.withLockedValue { $0 } == ["d", "d"])
    }
}

/// Records what the broker hands its cluster seam.
final class RecordingForwarder: RouteForwarding {
    private let recorded = NIOLockedValueBox<[String]>([])
    var events: [String] { recorded.withLockedValue { $0 } }
    func forward(_ message: RoutedMessage) { recorded.withLockedValue { $0.append("message \(message.topic)") } }
    func subscriptionAdded(clientID: String, filter: MQTTTopicFilter) {
        recorded.withLockedValue { $0.append("+\(clientID) \(filter.text)") }
    }
    func subscriptionRemoved(clientID: String, filter: MQTTTopicFilter) {
        recorded.withLockedValue { $0.append("-\(clientID) \(filter.text)") }
    }
}

@Suite("route forwarding seam")
struct RouteForwardingTests {
    @Test("routed messages and subscription changes reach the forwarding hook, a resubscribe once")
    func forwarded() async throws {
        let forwarder = RecordingForwarder()
        let broker = Broker(
            configuration: BrokerConfiguration(), authenticator: TestAuthenticator(), authorizer: TestAuthorizer(),
            forwarding: forwarder, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        _ = try await client.subscribe("a/#")
        _ = try await client.subscribe("a/#", packetIdentifier: 2)
        try await client.send(.publish(.init(topicName: "a/b", payload: ByteBuffer(string: "x"))))
        _ = try await client.receive()
        try await client.send(.unsubscribe(.init(packetIdentifier: 3, topicFilters: ["a/#"])))
        _ = try await client.receive()
        #expect(forwarder.events == ["+c a/#", "message a/b", "-c a/#"])
    }
}
