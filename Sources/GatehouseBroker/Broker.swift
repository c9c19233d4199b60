public import GatehouseAuth
public import Logging
public import MQTTCore
import NIOConcurrencyHelpers
public import NIOCore

/// Limits and defaults that every connection of one broker shares.
public struct BrokerConfiguration: Sendable {
    /// QoS 1 and 2 messages a 3.1.1 client may have unacknowledged (5.0 clients say their own).
    public var maximumInflightMessages = 20
    /// Messages queued for a session beyond its in-flight window; QoS 0 is dropped first.
    public var maximumQueuedMessages = 1_000
    /// QoS 2 PUBLISHes a client may have unreleased; announced as Receive Maximum.
    public var receiveMaximum: UInt16 = 100
    /// Topic aliases a 5.0 client may use towards the broker.
    public var topicAliasMaximum: UInt16 = 10
    /// Largest packet accepted; announced as Maximum Packet Size.
    public var maximumPacketSize = 1_048_576
    /// Levels a topic name or filter may have (EMQX's default).
    public var maximumTopicLevels = 128
    /// Subscriptions one session may hold.
    public var maximumSubscriptionsPerClient = 10_000
    /// The longest keep-alive a client may use, in seconds; 0 for no maximum. A 5.0 client
    /// asking for more (or for none) is told this value as Server Keep Alive.
    public var maximumKeepAlive: UInt16 = 0
    /// What a PUBLISH the ACL refuses costs the client beyond losing the message: by default
    /// nothing (5.0 PUBACK/PUBREC 0x87; 3.1.1 acknowledged and dropped [MQTT-3.3.5-2]; QoS 0
    /// dropped); or the connection (DISCONNECT 0x87 in 5.0, close in 3.1.1).
    public var disconnectOnRefusedPublish = false
    /// What stored deliveries may hold in total (payload and topic, per session); past it, new
    /// deliveries to persistent sessions are dropped and counted. 0 for no limit.
    public var maximumStoredBytes = 1 << 30

    public init() {}
}

/// The broker state shared by every connection: sessions, the subscription index and the
/// retained messages. Connections live on their own event loops; nothing here holds a lock
/// across the publish path except each target session's own.
public final class Broker: Sendable {
    public let configuration: BrokerConfiguration
    public let authenticator: any Authenticator
    public let authorizer: any Authorizer
    public let subscriptions = SubscriptionIndex()
    public let retained: RetainedStore
    public let statistics = BrokerStatistics()
    /// The durable store, when persistence is on.
    public let store: (any BrokerStore)?
    let storage: SessionStorage?
    let logger: Logger
    private let sessions = NIOLockedValueBox<[String: Session]>([:])
    private let rejectionLog = NIOLockedValueBox<(last: NIODeadline, suppressed: Int)>((.distantPast, 0))

    public init(
        configuration: BrokerConfiguration,
        authenticator: any Authenticator,
        authorizer: any Authorizer,
        store: (any BrokerStore)? = nil,
        logger: Logger
    ) {
        self.configuration = configuration
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.store = store
        self.storage = store.map { SessionStorage(store: $0, maximumBytes: configuration.maximumStoredBytes) }
        self.retained = RetainedStore(store: store)
        self.logger = logger
    }

    public func session(clientID: String) -> Session? {
        sessions.withLockedValue { $0[clientID] }
    }

    // MARK: Connect and disconnect

    public struct OpenedSession {
        public var session: Session
        public var sessionPresent: Bool
        /// The connection this one takes over from, to be disconnected. [MQTT-3.1.4-3]
        public var previousConnection: (any SessionConnection)?
    }

    /// A client identifier whose session another identity owns.
    public struct SessionOwnedElsewhere: Error {}

    /// Finds or creates the client's session and attaches `connection` to it. Clean Start
    /// discards an existing session first. [MQTT-3.1.2-4] A session belongs to the identity
    /// that created it: another identity may neither resume nor replace it.
    public func openSession(
        clientID: String,
        cleanStart: Bool,
        expiryInterval: UInt32,
        receiveMaximum: Int,
        principal: Principal,
        connection: any SessionConnection
    ) throws(SessionOwnedElsewhere) -> OpenedSession {
        let found = sessions.withLockedValue { sessions -> (Session, Bool, Session?)? in
            let existing = sessions[clientID]
            if let existing, existing.principal.identityID != principal.identityID { return nil }
            if let existing, !cleanStart {
                return (existing, true, nil as Session?)
            }
            let fresh = Session(
                clientID: clientID,
                principal: principal,
                expiryInterval: expiryInterval,
                maximumQueuedMessages: configuration.maximumQueuedMessages,
                statistics: statistics,
                storage: storage
            )
            // Deleted from the store before the new session is written under the same id.
            existing?.retire()
            sessions[clientID] = fresh
            return (fresh, false, existing)
        }
        guard let (session, present, discarded) = found else { throw SessionOwnedElsewhere() }
        var previous = session.attach(
            connection, principal: principal, receiveMaximum: receiveMaximum, expiryInterval: expiryInterval)
        // Reconnecting before a delayed Will is due cancels it. [MQTT-3.1.3-9]
        _ = session.takePendingWill()
        if let discarded {
            previous = discarded.detachAll() ?? previous
            removeSubscriptions(of: discarded)
            // Clean Start ends the old session, and a Will still waiting is due at its end.
            if let will = discarded.takePendingWill() { publishNow(will) }
        }
        return OpenedSession(session: session, sessionPresent: present, previousConnection: previous)
    }

    /// Puts back what the store kept: sessions (detached, their expiry counted from when their
    /// connection ended), subscriptions, queued and in-flight messages, retained messages and
    /// delayed Wills. Call it once, before any listener accepts.
    public func restore(_ state: RestoredBrokerState, on eventLoop: any EventLoop) {
        storage?.resume(fromMessageID: state.nextMessageID)
        for message in state.retained { retained.restore(message) }
        let now = wallClockSeconds()
        var allFilters: [(MQTTTopicFilter, SubscriptionEntry)] = []
        for stored in state.sessions {
            let session = Session(
                clientID: stored.clientID, principal: stored.principal, expiryInterval: stored.expiryInterval,
                maximumQueuedMessages: configuration.maximumQueuedMessages, statistics: statistics, storage: storage)
            let filters = stored.subscriptions.compactMap { subscription -> (MQTTTopicFilter, SubscriptionEntry)? in
                guard let filter = try? MQTTTopicFilter(parsing: subscription.filter) else { return nil }
                let entry = SubscriptionEntry(
                    clientID: stored.clientID, options: subscription.options, identifier: subscription.identifier,
                    session: session)
                return (filter, entry)
            }
            session.restore(stored, filters: filters)
            allFilters += filters
            sessions.withLockedValue { $0[stored.clientID] = session }
            let attachments = session.attachmentCount
            if stored.expiryInterval != UInt32.max {
                let remaining = max(0, stored.detachedAt + Int64(stored.expiryInterval) - now)
                eventLoop.scheduleTask(in: .seconds(remaining)) { [self] in
                    if session.hasStayedDetached(since: attachments) { discard(session) }
                }
            }
            if let will = stored.will {
                eventLoop.scheduleTask(in: .seconds(max(0, will.dueAt - now))) { [self] in
                    if let due = session.takePendingWill(since: attachments) { publishNow(due) }
                }
            }
        }
        subscriptions.update { trie in trie.insert(contentsOf: allFilters.map { ($0.1, $0.0) }) }
    }

    /// The connection ended. A session with expiry 0 ends with it; others stay for their
    /// expiry interval. [MQTT-3.1.2-23]
    public func connectionClosed(_ connection: any SessionConnection, session: Session, on eventLoop: any EventLoop) {
        guard session.detach(connection) else { return }  // taken over: the new owner keeps it
        let expiry = session.expiryInterval
        if expiry == 0 {
            discard(session)
        } else if expiry != UInt32.max {
            // A timer from an earlier disconnect must not end a session resumed since.
            let attachments = session.attachmentCount
            eventLoop.scheduleTask(in: .seconds(Int64(expiry))) { [self] in
                if session.hasStayedDetached(since: attachments) { discard(session) }
            }
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
        removeSubscriptions(of: session)
        if let will = session.takePendingWill() { publishNow(will) }
    }

    /// Publishes the Will of a connection that ended: now, or after its Will Delay Interval
    /// unless the session ends first or a new connection resumes it. [MQTT-3.1.3-9]
    public func publishWill(
        _ will: RoutedMessage,
        delay: UInt32,
        session: Session,
        on eventLoop: any EventLoop
    ) {
        let wait = min(delay, session.expiryInterval)
        guard wait > 0 else {
            publishNow(will)
            return
        }
        session.setPendingWill(will, dueAt: wallClockSeconds() + Int64(wait))
        let attachments = session.attachmentCount
        eventLoop.scheduleTask(in: .seconds(Int64(wait))) { [self] in
            if let due = session.takePendingWill(since: attachments) { publishNow(due) }
        }
    }

    /// Routes a message from outside any read cycle and wakes its subscribers.
    private func publishNow(_ message: RoutedMessage) {
        var batch = DeliveryBatch()
        publish(message, into: &batch)
        batch.wakeAll()
    }

    private func removeSubscriptions(of session: Session) {
        let filters = session.subscribedFilters
        guard !filters.isEmpty else { return }
        subscriptions.update { trie in
            for text in filters {
                guard let filter = try? MQTTTopicFilter(parsing: text) else { continue }
                trie.remove(clientID: session.clientID, filter: filter)
            }
        }
    }

    /// The principal of every connected client, for re-checking after an identity change.
    public func connectedPrincipals() -> [(clientID: String, principal: Principal)] {
        let all = sessions.withLockedValue { Array($0.values) }
        return all.compactMap { $0.currentConnection == nil ? nil : ($0.clientID, $0.principal) }
    }

    /// Ends the client's connection if it is still the one `principal` authenticated (it may
    /// have reconnected with other credentials since it was checked). The session stays.
    @discardableResult
    public func disconnect(clientID: String, ifStill principal: Principal, reason: MQTTReasonCode) -> Bool {
        guard let session = session(clientID: clientID), session.principal == principal,
            let connection = session.currentConnection
        else { return false }
        connection.disconnect(reason: reason)
        return true
    }

    /// Counts an ACL refusal and logs it, at most once a second (with how many were not
    /// logged), so that a misbehaving client cannot flood the log. The client learns nothing.
    public func noteRejection(_ principal: Principal, _ action: Action, topic: String) {
        statistics.add(statistics.authorizationRejections, 1)
        let now = NIODeadline.now()
        let suppressed = rejectionLog.withLockedValue { state -> Int? in
            guard now - state.last >= .seconds(1) else {
                state.suppressed += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.suppressed
        }
        guard let suppressed else { return }
        logger.notice(
            "ACL refused",
            metadata: [
                "identity": "\(principal.username)", "tenant": "\(principal.tenant)", "action": "\(action)",
                "topic": "\(topic)", "not_logged_since_last": "\(suppressed)",
            ])
    }

    /// After an ACL reload: removes every subscription the new rules no longer allow, and
    /// drops queued messages their sessions may no longer read, so that nothing is delivered
    /// against the new rules. Returns how many subscriptions were removed.
    @discardableResult
    public func recheckSubscriptions() -> Int {
        let all = sessions.withLockedValue { Array($0.values) }
        var removed = 0
        for session in all {
            let dropped = session.dropUnreadable(by: authorizer)
            if dropped > 0 {
                statistics.add(statistics.messagesDropped, dropped)
                logger.notice(
                    "queued messages dropped: the reloaded ACL no longer lets the client read them",
                    metadata: ["client_id": "\(session.clientID)", "count": "\(dropped)"])
            }
            let principal = session.principal
            for text in session.subscribedFilters {
                guard let filter = try? MQTTTopicFilter(parsing: text),
                    authorizer.authorize(principal, .subscribe, topic: filter.filter) == .reject,
                    unsubscribe(session, filter: text)
                else { continue }
                removed += 1
                statistics.add(statistics.authorizationRejections, 1)
                logger.notice(
                    "subscription removed: the reloaded ACL no longer allows it",
                    metadata: ["client_id": "\(session.clientID)", "filter": "\(text)"])
            }
        }
        return removed
    }

    /// Ends every connection, as at shutdown.
    public func disconnectAll(reason: MQTTReasonCode) {
        let all = sessions.withLockedValue { Array($0.values) }
        for session in all {
            if let connection = session.detachAll() { connection.disconnect(reason: reason) }
        }
    }

    // MARK: Subscriptions

    /// Whether `topic` (a name or a filter) is within the configured number of levels.
    public func isWithinTopicLevelLimit(_ topic: String) -> Bool {
        var levels = 1
        for byte in topic.utf8 where byte == UInt8(ascii: "/") {
            levels += 1
            if levels > configuration.maximumTopicLevels { return false }
        }
        return true
    }

    /// Records a subscription and returns the retained messages it should receive.
    public func subscribe(
        _ session: Session,
        filter: MQTTTopicFilter,
        options: MQTTPacket.SubscriptionOptions,
        identifier: UInt32?
    ) -> [RoutedMessage] {
        let entry = SubscriptionEntry(
            clientID: session.clientID, options: options, identifier: identifier, session: session)
        let existed = session.recordSubscription(entry, filter: filter)
        subscriptions.update { trie in trie.insert(entry, filter: filter) }
        // A new shared subscription gets no retained messages (5.0 §4.8.2).
        if filter.isShared { return [] }
        switch options.retainHandling {
        case .sendOnSubscribe: return retained.matching(filter: filter.filter)
        case .sendOnNewSubscription: return existed ? [] : retained.matching(filter: filter.filter)
        case .doNotSend: return []
        }
    }

    /// Removes the subscription `text` (as the client wrote it, `$share/…` included).
    public func unsubscribe(_ session: Session, filter text: String) -> Bool {
        guard session.forgetSubscription(filter: text), let filter = try? MQTTTopicFilter(parsing: text) else {
            return false
        }
        subscriptions.update { trie in trie.remove(clientID: session.clientID, filter: filter) }
        return true
    }

    // MARK: Routing

    /// Routes an accepted message to every matching session the subscriber may read it in.
    /// Connections to wake go into `batch`, so the caller can wake each event loop once per
    /// read cycle. Returns how many sessions it reached.
    @discardableResult
    public func publish(_ message: RoutedMessage, into batch: inout DeliveryBatch) -> Int {
        if message.retain, retained.store(message) { batch.wroteToStore = true }
        let match = subscriptions.snapshot.matchAll(topic: message.topic, publisherClientID: message.publisherClientID)
        guard !match.isEmpty else { return 0 }
        var reached = 0
        // Fan-out: encode the shared QoS 0 forms once instead of once per subscriber.
        var message = match.deliveries.count + match.sharedGroups.count > 1 ? message.encodingSharedForms() : message
        for delivery in match.deliveries.values {
            guard let session = delivery.session else { continue }
            reached += enqueue(&message, delivery, to: session, into: &batch)
        }
        // Each shared group sends one copy, to the next member in turn that is connected (or,
        // if none is, to the next member at all, whose session queues it).
        for group in match.sharedGroups {
            var chosen: SubscriptionEntry?
            for entry in group.rotation() {
                guard let session = entry.session else { continue }
                if session.isConnected {
                    chosen = entry
                    break
                }
                if chosen == nil { chosen = entry }
            }
            guard let chosen, let session = chosen.session else { continue }
            reached += enqueue(&message, Delivery(chosen), to: session, into: &batch)
        }
        if let id = message.storedID { storage?.store.append(.messageRouted(id)) }
        return reached
    }

    /// Queues one delivery if the subscriber may read the topic; returns 1 if it did.
    private func enqueue(
        _ message: inout RoutedMessage,
        _ delivery: Delivery,
        to session: Session,
        into batch: inout DeliveryBatch
    ) -> Int {
        let stored = StoredDelivery(
            qos: min(message.qos, delivery.qos),
            retain: delivery.retainAsPublished && message.retain,
            subscriptionIdentifiers: delivery.subscriptionIdentifiers)
        let enqueued = session.enqueue(&message, stored, readPermittedBy: authorizer)
        batch.add(enqueued)
        return enqueued.accepted ? 1 : 0
    }

    /// Retained messages for a new subscription go to that session alone, flagged retained.
    public func deliverRetained(
        _ messages: [RoutedMessage],
        to session: Session,
        options: MQTTPacket.SubscriptionOptions,
        identifier: UInt32?,
        into batch: inout DeliveryBatch
    ) {
        for var message in messages {
            let delivery = StoredDelivery(
                qos: min(message.qos, options.qos), retain: true, subscriptionIdentifiers: identifier.map { [$0] } ?? []
            )
            batch.add(session.enqueue(&message, delivery, readPermittedBy: authorizer))
        }
    }
}

/// What routing within one read cycle leaves for its end: the connections to wake (once per
/// event loop), and whether acknowledgements must wait for the store to commit.
public struct DeliveryBatch {
    private var wakes: [any SessionConnection] = []
    /// Set when routing wrote to the store; the caller clears it once it has taken a ticket.
    public var wroteToStore = false

    public init() {}

    mutating func add(_ enqueued: Session.Enqueued) {
        if let wake = enqueued.wake { wakes.append(wake) }
        if enqueued.stored { wroteToStore = true }
    }

    /// Wakes each connection once, with one task per event loop.
    public mutating func wakeAll() {
        guard !wakes.isEmpty else { return }
        let batch = wakes
        wakes.removeAll(keepingCapacity: true)
        wake(batch)
    }
}

extension Session {
    /// Detaches whatever connection is attached and returns it.
    func detachAll() -> (any SessionConnection)? {
        guard let current = currentConnection else { return nil }
        return detach(current) ? current : nil
    }
}

/// Wakes each connection once, with one task per event loop rather than one per message.
func wake(_ connections: [any SessionConnection]) {
    guard !connections.isEmpty else { return }
    var byLoop: [ObjectIdentifier: (any EventLoop, [any SessionConnection])] = [:]
    for connection in connections {
        let key = ObjectIdentifier(connection.eventLoop)
        byLoop[key, default: (connection.eventLoop, [])].1.append(connection)
    }
    for (loop, batch) in byLoop.values {
        if loop.inEventLoop {
            for connection in batch { connection.sessionHasOutput() }
        } else {
            loop.execute { for connection in batch { connection.sessionHasOutput() } }
        }
    }
}
