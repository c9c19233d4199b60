import Foundation
import GRDB
import GatehouseAuth
public import GatehouseBroker
import MQTTCore

extension SQLiteBrokerStore {
    /// Purges what expired while the broker was down, then reads everything else back. A
    /// session whose connection the previous process lost counts as detached from when the
    /// file last changed.
    public func load() throws(StoreError) -> RestoredBrokerState {
        let lostAt = lastChangedBeforeOpen
        do {
            try database.write { db in try purge(db, lostConnectionsAt: lostAt) }
            return try database.read { db in try read(db) }
        } catch {
            throw StoreError(description: "the broker store '\(settings.path)' cannot be read (damaged?): \(error)")
        }
    }

    private func purge(_ db: Database, lostConnectionsAt lostAt: Int64) throws {
        let now = Int64(Date().timeIntervalSince1970)
        try db.execute(sql: "UPDATE session SET detached_at = ? WHERE detached_at IS NULL", arguments: [lostAt])
        try db.execute(
            sql: "DELETE FROM session WHERE expiry_interval != ? AND detached_at + expiry_interval <= ?",
            arguments: [Int64(UInt32.max), now])
        // The writer deletes a session's rows with it, so only this purge leaves any behind.
        if db.changesCount > 0 {
            for table in ["subscription", "delivery", "inbound_qos2", "session_will"] {
                try db.execute(sql: "DELETE FROM \(table) WHERE client_id NOT IN (SELECT client_id FROM session)")
            }
        }
        // Queued (never sent) messages that expired are not delivered; in-flight ones complete.
        try db.execute(
            sql: """
                DELETE FROM delivery WHERE state = 0
                    AND message_id IN (SELECT id FROM message WHERE expires_at IS NOT NULL AND expires_at <= ?)
                """, arguments: [now])
        try db.execute(sql: "DELETE FROM message WHERE id NOT IN (SELECT message_id FROM delivery)")
        try db.execute(sql: "DELETE FROM retained WHERE expires_at IS NOT NULL AND expires_at <= ?", arguments: [now])
    }

    private func read(_ db: Database) throws -> RestoredBrokerState {
        let now = StoredMessageCoding.Now()
        // Sessions in an array, found by client id through an index: the values are large.
        var sessions: [RestoredBrokerState.Session] = []
        var index: [String: Int] = [:]
        let sessionCount = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM session") ?? 0
        sessions.reserveCapacity(sessionCount)
        index.reserveCapacity(sessionCount)
        let decoder = JSONDecoder()
        for row in try Row.fetchAll(db, sql: "SELECT * FROM session ORDER BY client_id") {
            let clientID: String = row["client_id"]
            let expiry: Int64 = row["expiry_interval"]
            index[clientID] = sessions.count
            sessions.append(
                RestoredBrokerState.Session(
                    clientID: clientID, principal: try decoder.decode(Principal.self, from: row["principal"] as Data),
                    expiryInterval: UInt32(clamping: expiry), detachedAt: row["detached_at"]))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM subscription") {
            let clientID: String = row["client_id"]
            let options = try MQTTPacket.SubscriptionOptions(
                byte: UInt8(clamping: row["options"] as Int64), version: .v5)
            let identifier: Int64? = row["identifier"]
            guard let at = index[clientID] else { continue }
            sessions[at].subscriptions.append(
                .init(filter: row["filter"], options: options, identifier: identifier.map { UInt32(clamping: $0) }))
        }
        // Only the size of each session's queue: its messages are read when its client returns.
        let backlogs = try Row.fetchCursor(
            db,
            sql: """
                SELECT d.client_id, COUNT(*), MAX(d.sequence), SUM(length(m.wire))
                FROM delivery d JOIN message m ON m.id = d.message_id GROUP BY d.client_id
                """)
        while let row = try backlogs.next() {
            guard let at = index[row[0] as String] else { continue }
            let count: Int = row[1]
            sessions[at].backlog = StoredBacklog(
                count: count, bytes: row[3] as Int + count * StoredBacklog.overheadPerDelivery,
                lastSequence: UInt64(row[2] as Int64))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM inbound_qos2") {
            guard let at = index[row["client_id"] as String] else { continue }
            sessions[at].inboundQoS2.append(UInt16(clamping: row["packet_id"] as Int64))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM session_will") {
            let message = try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: nil, now: now)
            let interval: Int64? = row["expiry_interval"]
            let will = WillMessage(message: message, expiryInterval: interval.map { UInt32(clamping: $0) })
            guard let at = index[row["client_id"] as String] else { continue }
            if let dueAt: Int64 = row["due_at"] {
                sessions[at].will = (will, dueAt)
            } else {
                sessions[at].armedWill = (will, UInt32(clamping: row["delay"] as Int64))
            }
        }
        let retained = try Row.fetchAll(db, sql: "SELECT * FROM retained").map { row in
            try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
        }
        let nextID = (try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM message") ?? 0) + 1
        return RestoredBrokerState(
            sessions: sessions, retained: retained, nextMessageID: StoredMessageID(nextID))
    }

    /// The session's rows up to `backlog.lastSequence`: those it held at start-up. Rows added
    /// since belong to deliveries the session already holds in memory.
    func readBacklog(of clientID: String, _ backlog: StoredBacklog, _ db: Database) throws
        -> [RestoredBrokerState.Delivery]
    {
        let now = StoredMessageCoding.Now()
        var deliveries: [RestoredBrokerState.Delivery] = []
        deliveries.reserveCapacity(backlog.count)
        let rows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    SELECT d.sequence, d.message_id, d.qos, d.retain, d.subscription_ids, d.state, d.packet_id,
                        m.wire, m.publisher, m.expires_at
                    FROM delivery d JOIN message m ON m.id = d.message_id
                    WHERE d.client_id = ? AND d.sequence <= ? ORDER BY d.sequence
                    """),
            arguments: [clientID, Int64(backlog.lastSequence)])
        while let row = try rows.next() {
            // By column position: rows read by name spend their time finding names.
            guard let qos = MQTTQoS(rawValue: UInt8(clamping: row[2] as Int64)) else { continue }
            let message = try StoredMessageCoding.message(
                wire: [UInt8](row[7] as Data), publisher: row[8], expiresAt: row[9], now: now)
            deliveries.append(
                .init(
                    sequence: UInt64(row[0] as Int64), messageID: StoredMessageID(row[1] as Int64), message: message,
                    delivery: StoredDelivery(
                        qos: qos, retain: row[3],
                        subscriptionIdentifiers: StoredMessageCoding.identifiers(row[4] as String?)),
                    state: RestoredBrokerState.Delivery.State(rawValue: row[5]) ?? .queued,
                    packetIdentifier: UInt16(clamping: row[6] as Int64)))
        }
        return deliveries
    }
}
