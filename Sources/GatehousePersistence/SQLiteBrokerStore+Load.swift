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
        for table in ["subscription", "delivery", "inbound_qos2", "will", "armed_will"] {
            try db.execute(sql: "DELETE FROM \(table) WHERE client_id NOT IN (SELECT client_id FROM session)")
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
        // Sized up front: growing a dictionary of a million messages costs more than reading them.
        var messages: [Int64: RoutedMessage] = [:]
        messages.reserveCapacity(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM message") ?? 0)
        let messageRows = try Row.fetchCursor(db, sql: "SELECT id, wire, publisher, expires_at FROM message")
        while let row = try messageRows.next() {
            // By column position: a million rows read by name spend their time finding names.
            messages[row[0]] = try StoredMessageCoding.message(
                wire: [UInt8](row[1] as Data), publisher: row[2], expiresAt: row[3], now: now)
        }
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
        let deliveries = try Row.fetchCursor(
            db,
            sql: """
                SELECT client_id, sequence, message_id, qos, retain, subscription_ids, state, packet_id
                FROM delivery ORDER BY client_id, sequence
                """)
        while let row = try deliveries.next() {
            let messageID: Int64 = row[2]
            guard let message = messages[messageID], let qos = MQTTQoS(rawValue: UInt8(clamping: row[3] as Int64))
            else { continue }
            let state = RestoredBrokerState.Delivery.State(rawValue: row[6]) ?? .queued
            let clientID: String = row[0]
            guard let at = index[clientID] else { continue }
            sessions[at].deliveries.append(
                .init(
                    sequence: UInt64(row[1] as Int64), messageID: StoredMessageID(messageID), message: message,
                    delivery: StoredDelivery(
                        qos: qos, retain: row[4],
                        subscriptionIdentifiers: StoredMessageCoding.identifiers(row[5] as String?)),
                    state: state, packetIdentifier: UInt16(clamping: row[7] as Int64)))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM inbound_qos2") {
            guard let at = index[row["client_id"] as String] else { continue }
            sessions[at].inboundQoS2.append(UInt16(clamping: row["packet_id"] as Int64))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM will") {
            let message = try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
            guard let at = index[row["client_id"] as String] else { continue }
            sessions[at].will = (message, row["due_at"])
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM armed_will") {
            let message = try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
            guard let at = index[row["client_id"] as String] else { continue }
            sessions[at].armedWill = (message, UInt32(clamping: row["delay"] as Int64))
        }
        let retained = try Row.fetchAll(db, sql: "SELECT * FROM retained").map { row in
            try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
        }
        let nextID = (try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM message") ?? 0) + 1
        return RestoredBrokerState(
            sessions: sessions, retained: retained, nextMessageID: StoredMessageID(nextID))
    }
}
