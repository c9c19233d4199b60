import Foundation
import GRDB
import GatehouseAuth
import GatehouseBroker
import Logging
import MQTTCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import GatehousePersistence

@Suite("broker store on SQLite")
struct SQLiteBrokerStoreTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString)")
    var path: String { directory.appendingPathComponent("broker.sqlite").path }
    let principal = Principal(identityID: "i", username: "u", clientIdentifier: "c", tenant: "t", roles: ["device"])
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    init() throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    private func open() throws -> SQLiteBrokerStore {
        let store = try SQLiteBrokerStore(settings: .init(path: path), logger: logger)
        return store
    }

    /// Appends `changes` and waits until the writer says they are committed.
    private func commit(_ changes: [StoreChange], to store: SQLiteBrokerStore) async {
        for change in changes { store.append(change) }
        let ticket = store.currentTicket()
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            store.whenDurable(ticket, on: MultiThreadedEventLoopGroup.singleton.next()) { done.resume() }
        }
    }

    private func rows(_ table: String) throws -> Int {
        try DatabaseQueue(path: path).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0 }
    }

    private func message(_ topic: String, expiresIn seconds: Int64? = nil) -> RoutedMessage {
        RoutedMessage(
            topic: topic, payload: ByteBuffer(string: "payload of \(topic)"), qos: .atLeastOnce, retain: false,
            forwardedProperties: [.contentType("text/plain"), .userProperty(name: "k", value: "v")],
            publisherClientID: "publisher", expiresAt: seconds.map { .now() + .seconds($0) })
    }

    @Test("a relaxed wait lets the batch fill; an urgent one closes it, and both are told")
    func relaxedAndUrgentWaiters() async throws {
        let store = try SQLiteBrokerStore(
            settings: .init(path: path, relaxedCommitInterval: .seconds(30)), logger: logger)
        _ = try store.load()
        store.start()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        store.append(.sessionOpened(clientID: "c", principal: principal, expiryInterval: 60))
        let ticket = store.currentTicket()
        let told = NIOLockedValueBox<[String]>([])
        store.whenDurable(ticket, on: loop, urgent: false) { told.withLockedValue { $0.append("relaxed") } }
        try await Task.sleep(for: .milliseconds(300))
        #expect(told.withLockedValue { $0 }.isEmpty)
        #expect(try rows("session") == 0)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            store.whenDurable(ticket, on: loop, urgent: true) { done.resume() }
        }
        #expect(try rows("session") == 1)
        try await Task.sleep(for: .milliseconds(50))
        #expect(told.withLockedValue { $0 } == ["relaxed"])
        store.close()
    }

    @Test("a message three sessions hold is stored once, and goes when the last lets go")
    func messageStoredOnce() async throws {
        let store = try open()
        _ = try store.load()
        store.start()
        let delivery = StoredDelivery(qos: .atLeastOnce, retain: false, subscriptionIdentifiers: [4, 9])
        var changes: [StoreChange] = [.messageSaved(1, message("a/b"))]
        for client in ["c1", "c2", "c3"] {
            changes.append(.sessionOpened(clientID: client, principal: principal, expiryInterval: 300))
            changes.append(.deliveryQueued(clientID: client, sequence: 0, message: 1, delivery: delivery))
        }
        await commit(changes, to: store)
        #expect(try rows("message") == 1 && rows("delivery") == 3)
        await commit([.deliveryDeleted(clientID: "c1", sequence: 0), .sessionDeleted(clientID: "c2")], to: store)
        #expect(try rows("message") == 1 && rows("delivery") == 1)
        await commit([.deliveryDeleted(clientID: "c3", sequence: 0)], to: store)
        #expect(try rows("delivery") == 0)
        // Collected one batch later: a message's deliveries may span two batches.
        await commit([], to: store)
        #expect(try rows("message") == 0)
        store.close()
    }

    @Test("what was committed comes back: sessions, subscriptions, delivery states, QoS 2 ids, retained, wills")
    func roundTrip() async throws {
        let store = try open()
        _ = try store.load()
        store.start()
        let options = MQTTPacket.SubscriptionOptions(qos: .exactlyOnce, noLocal: true, retainHandling: .doNotSend)
        let plain = StoredDelivery(qos: .atLeastOnce, retain: false, subscriptionIdentifiers: [])
        await commit(
            [
                .sessionOpened(clientID: "c", principal: principal, expiryInterval: 600),
                .subscriptionSaved(clientID: "c", filter: "a/#", options: options, identifier: 12),
                .subscriptionSaved(clientID: "c", filter: "gone", options: options, identifier: nil),
                .subscriptionDeleted(clientID: "c", filter: "gone"),
                .messageSaved(1, message("a/1", expiresIn: 3_600)),
                .messageSaved(2, message("a/2")),
                .messageSaved(3, message("a/3", expiresIn: 1)),
                .deliveryQueued(clientID: "c", sequence: 5, message: 1, delivery: plain),
                .deliveryQueued(clientID: "c", sequence: 6, message: 2, delivery: plain),
                .deliveryQueued(clientID: "c", sequence: 7, message: 3, delivery: plain),
                .deliverySent(clientID: "c", sequence: 5, packetIdentifier: 41),
                .deliveryReleased(clientID: "c", sequence: 5),
                .inboundQoS2Received(clientID: "c", packetIdentifier: 3),
                .inboundQoS2Received(clientID: "c", packetIdentifier: 4),
                .inboundQoS2Released(clientID: "c", packetIdentifier: 3),
                .retainedSet(message("r/1")),
                .retainedSet(message("r/2")),
                .retainedCleared(topic: "r/2"),
                .willScheduled(
                    clientID: "c", message: WillMessage(message: message("w"), expiryInterval: 30), dueAt: 2_000_000_000
                ),
                .sessionDetached(clientID: "c", at: Int64(Date().timeIntervalSince1970), expiryInterval: 600),
            ], to: store)
        store.close()
        try await Task.sleep(for: .milliseconds(1_100))  // message 3 expires meanwhile

        let reopened = try open()
        let state = try reopened.load()
        #expect(state.sessions.count == 1 && state.retained.map(\.topic) == ["r/1"])
        let session = try #require(state.sessions.first)
        #expect(session.principal == principal && session.expiryInterval == 600)
        #expect(session.subscriptions.map(\.filter) == ["a/#"])
        #expect(session.subscriptions.first?.options == options && session.subscriptions.first?.identifier == 12)
        let backlog = try #require(session.backlog, "start-up reads only the size of the queue")
        #expect(backlog.count == 2 && backlog.lastSequence == 6, "the expired queued message is purged")
        // A delivery made after start-up is the session's in memory already: not read back.
        reopened.start()
        await commit(
            [
                .messageSaved(9, message("a/9")),
                .deliveryQueued(clientID: "c", sequence: 7, message: 9, delivery: plain),
            ],
            to: reopened)
        let deliveries = try await withCheckedThrowingContinuation { continuation in
            reopened.loadBacklog(of: "c", backlog, on: MultiThreadedEventLoopGroup.singleton.next()) {
                continuation.resume(with: $0)
            }
        }
        #expect(deliveries.map(\.sequence) == [5, 6])
        #expect(deliveries.first?.state == .released && deliveries.first?.packetIdentifier == 41)
        #expect(session.inboundQoS2 == [4])
        #expect(session.will?.dueAt == 2_000_000_000 && session.will?.message.topic == "w")
        #expect(session.will?.message.expiryInterval == 30, "a Will's expiry counts from its publication")
        let restored = try #require(deliveries.first?.message)
        #expect(restored.payload == ByteBuffer(string: "payload of a/1") && restored.publisherClientID == "publisher")
        #expect(restored.forwardedProperties == [.contentType("text/plain"), .userProperty(name: "k", value: "v")])
        let remaining = try #require(restored.expiresAt) - .now()
        #expect(remaining > .seconds(3_590) && remaining <= .seconds(3_600))
        #expect(state.nextMessageID == 3)
        reopened.close()
    }

    @Test("a session whose expiry passed while the broker was down is purged with everything it held")
    func expiredSessionPurged() async throws {
        let store = try open()
        _ = try store.load()
        store.start()
        let longAgo = Int64(Date().timeIntervalSince1970) - 100
        await commit(
            [
                .sessionOpened(clientID: "old", principal: principal, expiryInterval: 60),
                .messageSaved(1, message("x")),
                .deliveryQueued(
                    clientID: "old", sequence: 0, message: 1,
                    delivery: StoredDelivery(qos: .atLeastOnce, retain: false, subscriptionIdentifiers: [])),
                .sessionDetached(clientID: "old", at: longAgo, expiryInterval: 60),
                .sessionOpened(clientID: "forever", principal: principal, expiryInterval: UInt32.max),
                .sessionDetached(clientID: "forever", at: longAgo, expiryInterval: UInt32.max),
            ], to: store)
        store.close()
        let state = try open().load()
        #expect(state.sessions.map(\.clientID) == ["forever"])
        #expect(try rows("message") == 0 && rows("delivery") == 0)
    }

    @Test("a store from before the one Will table keeps its pending and armed Wills, their expiry as an interval")
    func willMigration() throws {
        let old = try DatabaseQueue(path: path)
        try SQLiteBrokerStore.migrator.migrate(old, upTo: "2-armed-wills")
        let wire = Data(try StoredMessageCoding.wire(message("w")))
        let now = Int64(Date().timeIntervalSince1970)
        try old.write { db in
            for client in ["pending", "armed"] {
                try db.execute(
                    sql: "INSERT INTO session VALUES (?, ?, 600, ?)",
                    arguments: [client, try JSONEncoder().encode(principal), now])
            }
            try db.execute(
                sql: "INSERT INTO will VALUES ('pending', ?, 'p', ?, ?)", arguments: [wire, now + 130, now + 100])
            try db.execute(sql: "INSERT INTO armed_will VALUES ('armed', ?, 'p', ?, 5)", arguments: [wire, now + 40])
        }
        try old.close()
        let state = try open().load()
        let pending = try #require(state.sessions.first { $0.clientID == "pending" }?.will)
        #expect(pending.dueAt == now + 100 && pending.message.expiryInterval == 30)
        let armed = try #require(state.sessions.first { $0.clientID == "armed" }?.armedWill)
        #expect(armed.delay == 5 && (39...40).contains(armed.message.expiryInterval ?? 0))
        #expect(armed.message.topic == "w" && armed.message.message.expiresAt == nil)
    }

    @Test("a file that is not a store is refused, naming it")
    func damagedFile() throws {
        try Data(repeating: 0x5A, count: 8_192).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try SQLiteBrokerStore(settings: .init(path: path), logger: logger).load()
        } throws: { error in
            String(describing: error).contains(path)
        }
    }
}

@Suite("batch coalescing")
struct BatchCoalescingTests {
    let delivery = StoredDelivery(qos: .atLeastOnce, retain: false, subscriptionIdentifiers: [])
    let message = RoutedMessage(topic: "t", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, retain: false)

    func summary(_ changes: [StoreChange]) -> [String] {
        changes.map { change in
            switch change {
            case .messageSaved(let id, _): "saved \(id)"
            case .deliveryQueued(let client, let sequence, _, _): "queued \(client)#\(sequence)"
            case .deliverySent(let client, let sequence, _): "sent \(client)#\(sequence)"
            case .deliveryDeleted(let client, let sequence): "deleted \(client)#\(sequence)"
            case .sessionDetached(let client, _, _): "detached \(client)"
            default: "other"
            }
        }
    }

    @Test("a delivery queued, sent and acknowledged within one batch writes nothing, nor does its message")
    func cancelsOut() {
        let (kept, unheld) = BatchCoalescing.coalesce([
            .messageSaved(1, message), .deliveryQueued(clientID: "a", sequence: 0, message: 1, delivery: delivery),
            .messageRouted(1), .deliverySent(clientID: "a", sequence: 0, packetIdentifier: 1),
            .sessionDetached(clientID: "b", at: 0, expiryInterval: 9), .deliveryDeleted(clientID: "a", sequence: 0),
        ])
        #expect(summary(kept) == ["detached b"] && unheld.isEmpty)
    }

    @Test("a message another delivery still holds is kept; one routed partly in the next batch is kept and collected")
    func keepsWhatIsHeld() {
        let (held, _) = BatchCoalescing.coalesce([
            .messageSaved(1, message), .deliveryQueued(clientID: "a", sequence: 0, message: 1, delivery: delivery),
            .deliveryQueued(clientID: "b", sequence: 0, message: 1, delivery: delivery), .messageRouted(1),
            .deliveryDeleted(clientID: "a", sequence: 0),
        ])
        #expect(summary(held) == ["saved 1", "queued b#0"])
        let (split, unheld) = BatchCoalescing.coalesce([
            .messageSaved(2, message), .deliveryQueued(clientID: "a", sequence: 1, message: 2, delivery: delivery),
            .deliveryDeleted(clientID: "a", sequence: 1),
        ])
        #expect(summary(split) == ["saved 2"] && unheld == [2])
    }
}

extension BatchCoalescingTests {
    @Test("a session deleted and opened again in one batch keeps the new session's first delivery")
    func sequencesStartAgain() {
        let (kept, _) = BatchCoalescing.coalesce([
            .messageSaved(1, message), .deliveryQueued(clientID: "a", sequence: 0, message: 1, delivery: delivery),
            .messageRouted(1), .deliveryDeleted(clientID: "a", sequence: 0), .sessionDeleted(clientID: "a"),
            .messageSaved(2, message), .deliveryQueued(clientID: "a", sequence: 0, message: 2, delivery: delivery),
            .messageRouted(2), .deliveryDeleted(clientID: "a", sequence: 0),
        ])
        // The second delete cancels only the second queued row; the first pair cancelled itself.
        #expect(summary(kept) == ["other"])
        let (reopened, _) = BatchCoalescing.coalesce([
            .deliveryQueued(clientID: "a", sequence: 0, message: 1, delivery: delivery),
            .deliveryDeleted(clientID: "a", sequence: 0), .sessionDeleted(clientID: "a"),
            .messageSaved(2, message), .deliveryQueued(clientID: "a", sequence: 0, message: 2, delivery: delivery),
            .messageRouted(2),
        ])
        #expect(summary(reopened) == ["other", "saved 2", "queued a#0"])
    }

    @Test("'sent' and 'released' before a delete are dropped; a message saved with no delivery yet is collected")
    func updatesBeforeDelete() {
        let (kept, unheld) = BatchCoalescing.coalesce([
            .deliverySent(clientID: "a", sequence: 5, packetIdentifier: 9),
            .deliveryReleased(clientID: "a", sequence: 5),
            .deliveryDeleted(clientID: "a", sequence: 5),
            .messageSaved(3, message),
        ])
        #expect(summary(kept) == ["deleted a#5", "saved 3"] && unheld == [3])
    }

    @Test("a delivery queued in an earlier batch and acknowledged in this one is only deleted")
    func sentThenDeleted() {
        let (kept, _) = BatchCoalescing.coalesce([
            .deliverySent(clientID: "a", sequence: 3, packetIdentifier: 1),
            .deliveryDeleted(clientID: "a", sequence: 3),
            .deliverySent(clientID: "a", sequence: 4, packetIdentifier: 2),
        ])
        #expect(summary(kept) == ["deleted a#3", "sent a#4"])
    }
}
