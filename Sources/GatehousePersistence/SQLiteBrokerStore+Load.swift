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
        for table in ["subscription", "delivery", "inbound_qos2", "will"] {
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
        var messages: [Int64: RoutedMessage] = [:]
        let messageRows = try Row.fetchCursor(db, sql: "SELECT id, wire, publisher, expires_at FROM message")
        while let row = try messageRows.next() {
            messages[row["id"]] = try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
        }
        var sessions: [String: RestoredBrokerState.Session] = [:]
        var order: [String] = []
        let decoder = JSONDecoder()
        for row in try Row.fetchAll(db, sql: "SELECT * FROM session ORDER BY client_id") {
            let clientID: String = row["client_id"]
            let expiry: Int64 = row["expiry_interval"]
            sessions[clientID] = RestoredBrokerState.Session(
                clientID: clientID, principal: try decoder.decode(Principal.self, from: row["principal"] as Data),
                expiryInterval: UInt32(clamping: expiry), detachedAt: row["detached_at"])
            order.append(clientID)
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM subscription") {
            let clientID: String = row["client_id"]
            let options = try MQTTPacket.SubscriptionOptions(
                byte: UInt8(clamping: row["options"] as Int64), version: .v5)
            let identifier: Int64? = row["identifier"]
            sessions[clientID]?.subscriptions.append(
                .init(filter: row["filter"], options: options, identifier: identifier.map { UInt32(clamping: $0) }))
        }
        let deliveries = try Row.fetchCursor(db, sql: "SELECT * FROM delivery ORDER BY client_id, sequence")
        while let row = try deliveries.next() {
            let messageID: Int64 = row["message_id"]
            guard let message = messages[messageID], let qos = MQTTQoS(rawValue: UInt8(clamping: row["qos"] as Int64))
            else { continue }
            let state = RestoredBrokerState.Delivery.State(rawValue: row["state"]) ?? .queued
            let clientID: String = row["client_id"]
            sessions[clientID]?.deliveries.append(
                .init(
                    sequence: UInt64(row["sequence"] as Int64), messageID: StoredMessageID(messageID), message: message,
                    delivery: StoredDelivery(
                        qos: qos, retain: row["retain"],
                        subscriptionIdentifiers: StoredMessageCoding.identifiers(row["subscription_ids"] as String?)),
                    state: state, packetIdentifier: UInt16(clamping: row["packet_id"] as Int64)))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM inbound_qos2") {
            sessions[row["client_id"] as String]?.inboundQoS2.append(UInt16(clamping: row["packet_id"] as Int64))
        }
        for row in try Row.fetchAll(db, sql: "SELECT * FROM will") {
            let message = try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
            sessions[row["client_id"] as String]?.will = (message, row["due_at"])
        }
        let retained = try Row.fetchAll(db, sql: "SELECT * FROM retained").map { row in
            try StoredMessageCoding.message(
                wire: [UInt8](row["wire"] as Data), publisher: row["publisher"], expiresAt: row["expires_at"], now: now)
        }
        let nextID = (try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM message") ?? 0) + 1
        return RestoredBrokerState(
            sessions: order.compactMap { sessions[$0] }, retained: retained, nextMessageID: StoredMessageID(nextID))
    }
}
