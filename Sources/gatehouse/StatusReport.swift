import Foundation
import GatehouseBroker
import GatehouseIAM
import GatehouseTransport
import NIOCore
import Synchronization

/// The topic ACL's state for the status page: what is in force, and the last refused reload.
final class ACLState: Sendable {
    struct Snapshot: Sendable {
        var file: String
        var rules = 0
        var loadedAt: Int64 = 0
        var lastError: String?
        var lastErrorAt: Int64?
    }

    private let state: Mutex<Snapshot>

    init(file: String) {
        state = Mutex(Snapshot(file: file))
    }

    var snapshot: Snapshot { state.withLock { $0 } }

    func loaded(rules: Int) {
        state.withLock { state in
            state.rules = rules
            state.loadedAt = Int64(Date().timeIntervalSince1970)
        }
    }

    /// A reload refused: its errors, one `file:line:column: …` a line.
    func refused(_ errors: [String]) {
        state.withLock { state in
            state.lastError = errors.joined(separator: "\n")
            state.lastErrorAt = Int64(Date().timeIntervalSince1970)
        }
    }
}

/// The JSON object `GET /api/status` serves and the status page renders.
struct StatusReport {
    let broker: Broker
    let store: IdentityStore
    let acl: ACLState
    let server: MQTTServer
    let httpListeners: [String]

    func json() -> [UInt8] {
        let counts = broker.statistics.snapshot
        let sessions = broker.sessionCounts()
        let acl = acl.snapshot
        let audit = ((try? store.auditLog(limit: 10)) ?? []).reversed().map { entry -> [String: Any] in
            ["at": entry.at, "actor": entry.actor, "action": entry.action, "subject": entry.subject]
        }
        let object: [String: Any] = [
            "version": GatehouseVersion.current,
            "now_ms": Int64(Date().timeIntervalSince1970 * 1000),
            "uptime_seconds": (NIODeadline.now() - broker.statistics.startedAt).nanoseconds / 1_000_000_000,
            "connections": counts.clientsConnected,
            "sessions": ["connected": sessions.connected, "offline": sessions.offline],
            "subscriptions": broker.subscriptions.snapshot.count,
            "retained": broker.retained.count,
            "messages": [
                "received": counts.messagesReceived, "sent": counts.messagesSent, "dropped": counts.messagesDropped,
            ],
            "listeners": server.boundListeners.map(\.description) + httpListeners,
            "acl": [
                "file": acl.file, "rules": acl.rules, "loaded_at": acl.loadedAt,
                "last_error": acl.lastError ?? NSNull(), "last_error_at": acl.lastErrorAt ?? NSNull(),
            ] as [String: Any],
            "audit": audit,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return Array(data)
    }
}
