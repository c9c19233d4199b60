import GatehouseAuth
import NIOConcurrencyHelpers
import NIOCore

/// Every session by client id: who owns it, takeover, and its end when its expiry runs out.
final class SessionRegistry: Sendable {
    private let sessions = NIOLockedValueBox<[String: Session]>([:])
    private let maximumQueuedMessages: Int
    private let statistics: BrokerStatistics
    private let storage: SessionStorage?
    /// What else ends with a session: its subscriptions and its Will.
    private let ended: @Sendable (Session) -> Void

    init(
        maximumQueuedMessages: Int, statistics: BrokerStatistics, storage: SessionStorage?,
        ended: @escaping @Sendable (Session) -> Void
    ) {
        self.maximumQueuedMessages = maximumQueuedMessages
        self.statistics = statistics
        self.storage = storage
        self.ended = ended
    }

    func session(clientID: String) -> Session? {
        sessions.withLockedValue { $0[clientID] }
    }

    var all: [Session] { sessions.withLockedValue { Array($0.values) } }

    func makeSession(clientID: String, principal: Principal, expiryInterval: UInt32) -> Session {
        Session(
            clientID: clientID, principal: principal, expiryInterval: expiryInterval,
            maximumQueuedMessages: maximumQueuedMessages, statistics: statistics, storage: storage)
    }

    /// The client's session to attach to: the existing one, or (Clean Start, or none) a new one
    /// that replaces it, returned as `replaced`. Nil when another identity owns the id.
    func sessionToAttach(clientID: String, cleanStart: Bool, expiryInterval: UInt32, principal: Principal)
        -> (session: Session, present: Bool, replaced: Session?)?
    {
        sessions.withLockedValue { sessions in
            let existing = sessions[clientID]
            if let existing, existing.principal.identityID != principal.identityID { return nil }
            if let existing, !cleanStart { return (existing, true, nil) }
            let fresh = makeSession(clientID: clientID, principal: principal, expiryInterval: expiryInterval)
            // Deleted from the store before the new session is written under the same id.
            existing?.retire()
            sessions[clientID] = fresh
            return (fresh, false, existing)
        }
    }

    func insertRestored(_ session: Session) {
        sessions.withLockedValue { $0[session.clientID] = session }
    }

    /// Ends `session` once `seconds` pass, unless a connection attached in the meantime (a
    /// timer from an earlier disconnect must not end a session resumed since).
    func expire(_ session: Session, in seconds: Int64, on eventLoop: any EventLoop) {
        let attachments = session.attachmentCount
        eventLoop.scheduleTask(in: .seconds(seconds)) { [self] in
            if session.hasStayedDetached(since: attachments) { discard(session) }
        }
    }

    /// The connection ended. A session with expiry 0 ends with it; others stay for their
    /// expiry interval. [MQTT-3.1.2-23]
    func connectionClosed(_ connection: any SessionConnection, session: Session, on eventLoop: any EventLoop) {
        guard session.detach(connection) else { return }  // taken over: the new owner keeps it
        let expiry = session.expiryInterval
        if expiry == 0 {
            discard(session)
        } else if expiry != UInt32.max {
            expire(session, in: Int64(expiry), on: eventLoop)
        }
    }

    private func discard(_ session: Session) {
        let removed = sessions.withLockedValue { sessions in
            guard sessions[session.clientID] === session else { return false }
            sessions[session.clientID] = nil
            return true
        }
        guard removed else { return }
        session.retire()
        ended(session)
    }
}
