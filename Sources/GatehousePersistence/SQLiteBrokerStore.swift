import Atomics
import Foundation
import GRDB
public import GatehouseBroker
public import Logging
import MQTTCore
import Metrics
public import NIOCore

/// The broker's durable state in its own SQLite file (WAL): sessions, subscriptions, messages
/// stored once with a row per session that holds them, inbound QoS 2 state, retained messages
/// and delayed Wills.
///
/// One writer thread applies the broker's changes in order and commits them in groups: a
/// batch closes after `commitInterval`, at `maximumBatch` changes or when the flow pauses, so
/// one commit serves many messages. While no urgent acknowledgement waits (those waiting are
/// likely released by their subscribers first) a batch may fill for `relaxedCommitInterval`:
/// more of its deliveries are acknowledged within it and cancel out. Event loops only append
/// under a short lock.
public final class SQLiteBrokerStore: BrokerStore, @unchecked Sendable {
    public enum Durability: String, Sendable, CaseIterable {
        /// Survives a crash of the process (SQLite `synchronous = NORMAL` in WAL mode).
        case normal
        /// Also survives a power loss: every commit is synced to the disk.
        case full
    }

    public struct Settings: Sendable {
        public var path: String
        public var durability: Durability
        public var commitInterval: TimeAmount
        public var relaxedCommitInterval: TimeAmount
        public var maximumBatch: Int
        public var quietGap: TimeAmount

        public init(
            path: String, durability: Durability = .normal, commitInterval: TimeAmount = .milliseconds(2),
            relaxedCommitInterval: TimeAmount = .milliseconds(20), maximumBatch: Int = 8_192,
            quietGap: TimeAmount = .microseconds(100)
        ) {
            self.path = path
            self.durability = durability
            self.commitInterval = commitInterval
            self.relaxedCommitInterval = max(commitInterval, relaxedCommitInterval)
            self.maximumBatch = maximumBatch
            self.quietGap = quietGap
        }
    }

    /// Start-up refused: the file is damaged, unreadable or from a newer Gatehouse.
    public struct StoreError: Error, CustomStringConvertible {
        public var description: String
    }

    public let settings: Settings
    /// A pool: one writer, and readers that load a returning session's messages meanwhile.
    let database: DatabasePool
    private let logger: Logger
    /// When the file last changed before this process opened it: the moment a crashed broker
    /// lost the connections its sessions still had.
    let lastChangedBeforeOpen: Int64

    private let condition = NSCondition()
    // Guarded by `condition`:
    private var pending: [StoreChange] = []
    /// The ticket of the batch now filling; every change appended is in it or an earlier one.
    /// Written under `condition` when a batch is taken, read without it: an appender's lock
    /// orders its read after the take its changes missed.
    private let openTicket = ManagedAtomic<UInt64>(1)
    private var committedTicket: UInt64 = 0
    private var waiters: [(ticket: UInt64, eventLoop: any EventLoop, urgent: Bool, body: @Sendable () -> Void)] = []
    private var stopping = false
    private var running = false
    /// The writer waits for a batch to begin; while it lets one fill, appends need not wake it.
    private var writerIdle = false
    private var commits = 0
    /// False after a batch of twice `maximumBatch`: changes piled up while the writer wrote.
    private let keepingUp = ManagedAtomic(true)
    private var appliedChanges = 0
    // Writer thread only:
    /// Messages that lost their last delivery in the previous batch, deleted in this one if
    /// still unheld: a message's deliveries may span two batches.
    private var collectNext: Set<Int64> = []
    /// Changes that reached SQL after coalescing.
    private var writtenChanges = 0
    /// Coalescing left out, the transaction's time: what each commit cost the writer.
    private let commitDuration = Metrics.Timer(label: "gatehouse_persistence_commit_seconds")

    /// Opens (creating if needed) and migrates the store. A file that is not a Gatehouse store,
    /// is damaged, or was written by a newer schema is refused with its name in the error.
    public init(settings: Settings, logger: Logger) throws(StoreError) {
        self.settings = settings
        self.logger = logger
        self.lastChangedBeforeOpen = Self.lastModification(of: settings.path)
        var configuration = Configuration()
        configuration.foreignKeysEnabled = false  // the writer deletes a session's rows itself
        let synchronous = settings.durability == .full ? "FULL" : "NORMAL"
        // The pool puts the file in WAL mode.
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = \(synchronous)") }
        let path = settings.path
        do {
            database = try DatabasePool(path: path, configuration: configuration)
            let migrator = Self.migrator
            let superseded = try database.read { db in try migrator.hasBeenSuperseded(db) }
            guard !superseded else {
                throw StoreError(
                    description: "the broker store '\(path)' was written by a newer Gatehouse; refusing to start")
            }
            try migrator.migrate(database)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(
                description: "the broker store '\(path)' cannot be opened (damaged or not a Gatehouse store): \(error)")
        }
    }

    public static func defaultPath(dataDirectory: String) -> String {
        (dataDirectory as NSString).appendingPathComponent("broker.sqlite")
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("1-broker") { db in
            try db.execute(
                sql: """
                    CREATE TABLE session (
                        client_id TEXT PRIMARY KEY NOT NULL,
                        principal BLOB NOT NULL,
                        expiry_interval INTEGER NOT NULL,
                        detached_at INTEGER);
                    CREATE TABLE subscription (
                        client_id TEXT NOT NULL,
                        filter TEXT NOT NULL,
                        options INTEGER NOT NULL,
                        identifier INTEGER,
                        PRIMARY KEY (client_id, filter)) WITHOUT ROWID;
                    CREATE TABLE message (
                        id INTEGER PRIMARY KEY,
                        wire BLOB NOT NULL,
                        publisher TEXT,
                        expires_at INTEGER);
                    CREATE TABLE delivery (
                        client_id TEXT NOT NULL,
                        sequence INTEGER NOT NULL,
                        message_id INTEGER NOT NULL,
                        qos INTEGER NOT NULL,
                        retain INTEGER NOT NULL,
                        subscription_ids TEXT,
                        state INTEGER NOT NULL DEFAULT 0,
                        packet_id INTEGER NOT NULL DEFAULT 0,
                        PRIMARY KEY (client_id, sequence)) WITHOUT ROWID;
                    CREATE INDEX delivery_by_message ON delivery(message_id);
                    CREATE TABLE inbound_qos2 (
                        client_id TEXT NOT NULL,
                        packet_id INTEGER NOT NULL,
                        PRIMARY KEY (client_id, packet_id)) WITHOUT ROWID;
                    CREATE TABLE retained (
                        topic TEXT PRIMARY KEY NOT NULL,
                        wire BLOB NOT NULL,
                        publisher TEXT,
                        expires_at INTEGER);
                    CREATE TABLE will (
                        client_id TEXT PRIMARY KEY NOT NULL,
                        wire BLOB NOT NULL,
                        publisher TEXT,
                        expires_at INTEGER,
                        due_at INTEGER NOT NULL);
                    """)
        }
        migrator.registerMigration("2-armed-wills") { db in
            try db.execute(
                sql: """
                    CREATE TABLE armed_will (
                        client_id TEXT PRIMARY KEY NOT NULL,
                        wire BLOB NOT NULL,
                        publisher TEXT,
                        expires_at INTEGER,
                        delay INTEGER NOT NULL);
                    """)
        }
        // One Will row a session: armed (due_at NULL, its connection is up) or pending. Its
        // Message Expiry is an interval, counted when it is published.
        migrator.registerMigration("3-wills") { db in
            try db.execute(
                sql: """
                    CREATE TABLE session_will (
                        client_id TEXT PRIMARY KEY NOT NULL,
                        wire BLOB NOT NULL,
                        publisher TEXT,
                        expiry_interval INTEGER,
                        delay INTEGER NOT NULL DEFAULT 0,
                        due_at INTEGER);
                    INSERT OR REPLACE INTO session_will (client_id, wire, publisher, expiry_interval, delay)
                        SELECT client_id, wire, publisher, MAX(0, expires_at - CAST(strftime('%s', 'now') AS INTEGER)), delay FROM armed_will;
                    INSERT OR REPLACE INTO session_will (client_id, wire, publisher, expiry_interval, due_at)
                        SELECT client_id, wire, publisher, MAX(0, expires_at - due_at), due_at FROM will;
                    DROP TABLE will;
                    DROP TABLE armed_will;
                    """)
        }
        return migrator
    }

    private static func lastModification(of path: String) -> Int64 {
        let times = [path, path + "-wal"].compactMap { file -> Date? in
            (try? FileManager.default.attributesOfItem(atPath: file))?[.modificationDate] as? Date
        }
        return Int64((times.max() ?? Date()).timeIntervalSince1970)
    }

    // MARK: BrokerStore

    public func append(_ change: StoreChange) {
        condition.lock()
        pending.append(change)
        if writerIdle || pending.count == settings.maximumBatch { condition.signal() }
        condition.unlock()
    }

    public func append(contentsOf changes: [StoreChange]) {
        condition.lock()
        let before = pending.count
        pending.append(contentsOf: changes)
        let limit = settings.maximumBatch
        if writerIdle || (before < limit && pending.count >= limit) { condition.signal() }
        condition.unlock()
    }

    public func currentTicket() -> UInt64 {
        openTicket.load(ordering: .acquiring)
    }

    public func whenDurable(
        _ ticket: UInt64, on eventLoop: any EventLoop, urgent: Bool, _ body: @escaping @Sendable () -> Void
    ) {
        condition.lock()
        if committedTicket >= ticket {
            condition.unlock()
            eventLoop.execute(body)
            return
        }
        waiters.append((ticket, eventLoop, urgent, body))
        // An urgent waiter shortens a relaxed batch.
        if writerIdle || urgent { condition.signal() }
        condition.unlock()
    }

    public var isKeepingUp: Bool { keepingUp.load(ordering: .relaxed) }

    public func loadBacklog(
        of clientID: String, _ backlog: StoredBacklog, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (Result<[RestoredBrokerState.Delivery], any Error>) -> Void
    ) {
        database.asyncRead { [self] db in
            let result = Result { () throws -> [RestoredBrokerState.Delivery] in
                try readBacklog(of: clientID, backlog, try db.get())
            }
            eventLoop.execute { body(result) }
        }
    }

    // MARK: The writer

    /// Starts the writer thread. Call after `load()`.
    public func start() {
        condition.lock()
        running = true
        condition.unlock()
        let thread = Thread { [self] in runWriter() }
        thread.name = "gatehouse-store-writer"
        thread.start()
    }

    /// Commits everything appended so far, stops the writer and checkpoints the WAL into the
    /// main file, as at shutdown.
    public func close() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { condition.wait() }
        let (commits, changes) = (self.commits, appliedChanges)
        condition.unlock()
        logger.info(
            "broker store writer stopped",
            metadata: ["commits": "\(commits)", "changes": "\(changes)", "written": "\(writtenChanges)"])
        do {
            try database.writeWithoutTransaction { db in
                _ = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)")
            }
            try database.close()
        } catch {
            logger.error("broker store checkpoint failed", metadata: ["file": "\(settings.path)", "error": "\(error)"])
        }
    }

    private func runWriter() {
        while let (changes, ticket) = nextBatch() {
            var failures = 0
            while true {
                do {
                    if !changes.isEmpty || !collectNext.isEmpty {
                        let (kept, unheld) = BatchCoalescing.coalesce(changes)
                        writtenChanges += kept.count
                        let collect = collectNext
                        let started = DispatchTime.now().uptimeNanoseconds
                        collectNext = try database.write { db in
                            try apply(kept, db, collecting: collect).union(unheld.map { Int64($0) })
                        }
                        commitDuration.recordNanoseconds(DispatchTime.now().uptimeNanoseconds - started)
                    }
                    break
                } catch {
                    // Nothing is acknowledged meanwhile: publishers wait rather than lose messages.
                    failures += 1
                    if failures == 1 || failures % 60 == 0 {
                        logger.error(
                            "broker store commit failed; retrying",
                            metadata: ["file": "\(settings.path)", "error": "\(error)", "attempts": "\(failures)"])
                    }
                    Thread.sleep(forTimeInterval: 1)
                }
            }
            finish(ticket: ticket, changes: changes.count)
        }
        if !collectNext.isEmpty {
            let collect = collectNext
            _ = try? database.write { db in try apply([], db, collecting: collect) }
        }
        condition.lock()
        running = false
        condition.broadcast()
        condition.unlock()
    }

    /// Waits for work, then lets the batch fill for up to `commitInterval`. Nil once stopping
    /// with nothing left.
    private func nextBatch() -> ([StoreChange], UInt64)? {
        condition.lock()
        defer { condition.unlock() }
        while pending.isEmpty && !waiters.contains(where: { $0.ticket > committedTicket }) {
            if stopping { return nil }
            writerIdle = true
            condition.wait()
            writerIdle = false
        }
        // The batch fills while changes keep coming: it closes at `commitInterval`, at
        // `maximumBatch`, or as soon as the flow pauses for `quietGap` (publishers waiting for
        // their acknowledgements send nothing more), whichever comes first. With no urgent
        // waiter it just fills until `relaxedCommitInterval` (or an urgent waiter comes).
        let opened = Date()
        let gap = Double(settings.quietGap.nanoseconds) / 1e9
        var seen = pending.count
        while !stopping && pending.count < settings.maximumBatch {
            let urgent = waiters.contains { $0.urgent }
            let interval = urgent ? settings.commitInterval : settings.relaxedCommitInterval
            let closesAt = opened.addingTimeInterval(Double(interval.nanoseconds) / 1e9)
            let now = Date()
            guard now < closesAt else { break }
            guard urgent else {
                _ = condition.wait(until: closesAt)
                continue
            }
            if !condition.wait(until: min(closesAt, now.addingTimeInterval(gap))) {
                if pending.count == seen { break }
            }
            seen = pending.count
        }
        let changes = pending
        pending = []
        keepingUp.store(changes.count < 2 * settings.maximumBatch, ordering: .relaxed)
        let ticket = openTicket.loadThenWrappingIncrement(ordering: .acquiringAndReleasing)
        return (changes, ticket)
    }

    private func finish(ticket: UInt64, changes: Int) {
        condition.lock()
        committedTicket = ticket
        if changes > 0 { commits += 1 }
        appliedChanges += changes
        // One task per event loop, however many of its connections waited for this commit.
        var due: [ObjectIdentifier: (any EventLoop, [@Sendable () -> Void])] = [:]
        waiters.removeAll { waiter in
            guard waiter.ticket <= ticket else { return false }
            due[ObjectIdentifier(waiter.eventLoop), default: (waiter.eventLoop, [])].1.append(waiter.body)
            return true
        }
        condition.unlock()
        for (eventLoop, bodies) in due.values {
            eventLoop.execute { for body in bodies { body() } }
        }
    }

    /// A session's Will: armed (no due time) or pending.
    private func saveWill(
        _ will: WillMessage, of clientID: String, delay: UInt32, dueAt: Int64?, _ db: Database
    ) throws {
        try db.cachedStatement(
            sql: """
                INSERT OR REPLACE INTO session_will (client_id, wire, publisher, expiry_interval, delay, due_at)
                VALUES (?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            clientID, Data(try StoredMessageCoding.wire(will.message)), will.message.publisherClientID,
            will.expiryInterval.map { Int64($0) }, Int64(delay), dueAt,
        ])
    }

    /// Applies the changes, deletes the messages of `collect` that nothing holds any more, and
    /// returns those whose last holder this batch deleted.
    private func apply(_ changes: [StoreChange], _ db: Database, collecting collect: Set<Int64>) throws -> Set<Int64> {
        let now = StoredMessageCoding.Now()
        var unreferenced: Set<Int64> = []
        for change in changes {
            switch change {
            case .sessionOpened(let clientID, let principal, let expiryInterval):
                try db.cachedStatement(
                    sql: """
                        INSERT INTO session (client_id, principal, expiry_interval, detached_at) VALUES (?, ?, ?, NULL)
                        ON CONFLICT (client_id) DO UPDATE SET principal = excluded.principal,
                            expiry_interval = excluded.expiry_interval, detached_at = NULL
                        """
                ).execute(arguments: [clientID, try JSONEncoder().encode(principal), Int64(expiryInterval)])
            case .sessionDetached(let clientID, let at, let expiryInterval):
                try db.cachedStatement(
                    sql: "UPDATE session SET detached_at = ?, expiry_interval = ? WHERE client_id = ?"
                ).execute(arguments: [at, Int64(expiryInterval), clientID])
            case .sessionDeleted(let clientID):
                let held = try Int64.fetchAll(
                    db.cachedStatement(sql: "SELECT message_id FROM delivery WHERE client_id = ?"),
                    arguments: [clientID])
                unreferenced.formUnion(held)
                for table in ["session", "subscription", "delivery", "inbound_qos2", "session_will"] {
                    try db.cachedStatement(sql: "DELETE FROM \(table) WHERE client_id = ?").execute(arguments: [
                        clientID
                    ])
                }
            case .subscriptionSaved(let clientID, let filter, let options, let identifier):
                try db.cachedStatement(
                    sql:
                        "INSERT OR REPLACE INTO subscription (client_id, filter, options, identifier) VALUES (?, ?, ?, ?)"
                ).execute(arguments: [
                    clientID, filter, Int64(options.byte(version: .v5)), identifier.map { Int64($0) },
                ])
            case .subscriptionDeleted(let clientID, let filter):
                try db.cachedStatement(sql: "DELETE FROM subscription WHERE client_id = ? AND filter = ?")
                    .execute(arguments: [clientID, filter])
            case .messageSaved(let id, let message):
                try db.cachedStatement(
                    sql: "INSERT OR IGNORE INTO message (id, wire, publisher, expires_at) VALUES (?, ?, ?, ?)"
                ).execute(arguments: [
                    Int64(id), Data(try StoredMessageCoding.wire(message)), message.publisherClientID,
                    StoredMessageCoding.expiry(of: message, now: now),
                ])
            case .deliveryQueued(let clientID, let sequence, let messageID, let delivery):
                try db.cachedStatement(
                    sql: """
                        INSERT OR REPLACE INTO delivery (client_id, sequence, message_id, qos, retain, subscription_ids)
                        VALUES (?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    clientID, Int64(sequence), Int64(messageID), Int64(delivery.qos.rawValue), delivery.retain,
                    StoredMessageCoding.identifiers(delivery.subscriptionIdentifiers),
                ])
            case .deliverySent(let clientID, let sequence, let packetIdentifier):
                try db.cachedStatement(
                    sql: "UPDATE delivery SET state = 1, packet_id = ? WHERE client_id = ? AND sequence = ?"
                ).execute(arguments: [Int64(packetIdentifier), clientID, Int64(sequence)])
            case .deliveryReleased(let clientID, let sequence):
                try db.cachedStatement(sql: "UPDATE delivery SET state = 2 WHERE client_id = ? AND sequence = ?")
                    .execute(arguments: [clientID, Int64(sequence)])
            case .deliveryDeleted(let clientID, let sequence):
                if let messageID = try Int64.fetchOne(
                    db.cachedStatement(
                        sql: "DELETE FROM delivery WHERE client_id = ? AND sequence = ? RETURNING message_id"),
                    arguments: [clientID, Int64(sequence)])
                {
                    unreferenced.insert(messageID)
                }
            case .inboundQoS2Received(let clientID, let packetIdentifier):
                try db.cachedStatement(sql: "INSERT OR IGNORE INTO inbound_qos2 (client_id, packet_id) VALUES (?, ?)")
                    .execute(arguments: [clientID, Int64(packetIdentifier)])
            case .inboundQoS2Released(let clientID, let packetIdentifier):
                try db.cachedStatement(sql: "DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?")
                    .execute(arguments: [clientID, Int64(packetIdentifier)])
            case .retainedSet(let message):
                try db.cachedStatement(
                    sql: "INSERT OR REPLACE INTO retained (topic, wire, publisher, expires_at) VALUES (?, ?, ?, ?)"
                ).execute(arguments: [
                    message.topic, Data(try StoredMessageCoding.wire(message)), message.publisherClientID,
                    StoredMessageCoding.expiry(of: message, now: now),
                ])
            case .retainedCleared(let topic):
                try db.cachedStatement(sql: "DELETE FROM retained WHERE topic = ?").execute(arguments: [topic])
            case .willScheduled(let clientID, let will, let dueAt):
                try saveWill(will, of: clientID, delay: 0, dueAt: dueAt, db)
            case .willArmed(let clientID, let will, let delay):
                try saveWill(will, of: clientID, delay: delay, dueAt: nil, db)
            case .willCancelled(let clientID), .willDisarmed(let clientID):
                try db.cachedStatement(sql: "DELETE FROM session_will WHERE client_id = ?").execute(arguments: [
                    clientID
                ])
            case .messageRouted:
                break
            }
        }
        // A message goes when the last session holding it has let go.
        for id in collect {
            try db.cachedStatement(
                sql: "DELETE FROM message WHERE id = ? AND NOT EXISTS (SELECT 1 FROM delivery WHERE message_id = ?)"
            ).execute(arguments: [id, id])
        }
        return unreferenced
    }
}
