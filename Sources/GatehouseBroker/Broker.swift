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
    /// Connected clients at most, in all and per identity; 0 for no limit.
    public var maximumConnections = 0
    public var maximumConnectionsPerIdentity = 0
    /// PUBLISH packets and payload bytes a second one client may send (bursts up to one
    /// second's worth); past it, DISCONNECT 0x96 Message rate too high. 0 for no limit.
    public var maximumPublishRate = 0
    public var maximumPublishBytesRate = 0
    /// What queued and in-flight messages may hold in memory, all sessions together; past it
    /// QoS 0 publishes are dropped and QoS 1/2 ones refused with 0x97 Quota exceeded. 0: no limit.
    public var maximumQueuedBytes = 0

    public init() {}
}

/// The broker state shared by every connection, in parts: the session registry, the router
/// (subscriptions, retained messages, delivery), the will scheduler and the `$SYS` statistics.
/// Connections live on their own event loops; nothing here holds a lock across the publish path
/// except each target session's own.
public final class Broker: Sendable {
    public let configuration: BrokerConfiguration
    public let authenticator: any Authenticator
    /// MQTT 5 enhanced authentication (SCRAM, re-authentication), when configured.
    public let enhancedAuthenticator: (any EnhancedAuthenticator)?
    public let authorizer: any Authorizer
    /// Every decision the broker asks of `authorizer` goes through here.
    public let access: AccessControl
    public let statistics = BrokerStatistics()
    /// The durable store, when persistence is on.
    public let store: (any BrokerStore)?
    let storage: SessionStorage?
    let router: Router
    let registry: SessionRegistry
    let admission: ConnectionAdmission
    /// Every connection's keep-alive, one wheel per event loop.
    let keepAliveWheels = KeepAliveWheels<BrokerConnectionHandler>()
    let wills: WillScheduler
    let logger: Logger

    public var subscriptions: SubscriptionIndex { router.subscriptions }
    public var retained: RetainedStore { router.retained }

    public init(
        configuration: BrokerConfiguration,
        authenticator: any Authenticator,
        enhancedAuthenticator: (any EnhancedAuthenticator)? = nil,
        authorizer: any Authorizer,
        store: (any BrokerStore)? = nil,
        forwarding: (any RouteForwarding)? = nil,
        logger: Logger
    ) {
        self.configuration = configuration
        self.authenticator = authenticator
        self.enhancedAuthenticator = enhancedAuthenticator
        self.authorizer = authorizer
        let access = AccessControl(authorizer: authorizer, statistics: statistics, logger: logger)
        self.access = access
        self.store = store
        let storage = store.map { SessionStorage(store: $0, maximumBytes: configuration.maximumStoredBytes) }
        self.storage = storage
        let router = Router(access: access, store: store, storage: storage, forwarding: forwarding)
        let wills = WillScheduler(router: router)
        self.router = router
        self.wills = wills
        self.registry = SessionRegistry(
            maximumQueuedMessages: configuration.maximumQueuedMessages, statistics: statistics, storage: storage
        ) { session in
            router.removeSubscriptions(of: session)
            wills.publishPending(of: session)
        }
        self.logger = logger
        self.admission = ConnectionAdmission(
            maximumConnections: configuration.maximumConnections,
            maximumPerIdentity: configuration.maximumConnectionsPerIdentity)
    }

    public func session(clientID: String) -> Session? {
        registry.session(clientID: clientID)
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
        guard
            let (session, present, replaced) = registry.sessionToAttach(
                clientID: clientID, cleanStart: cleanStart, expiryInterval: expiryInterval, principal: principal)
        else { throw SessionOwnedElsewhere() }
        var previous = session.attach(
            connection, principal: principal, receiveMaximum: receiveMaximum, expiryInterval: expiryInterval)
        // Reconnecting before a delayed Will is due cancels it. [MQTT-3.1.3-9]
        _ = session.takePendingWill()
        session.startLoadingBacklog(readPermittedBy: authorizer, on: connection.eventLoop, logger: logger)
        if let replaced {
            previous = replaced.detachAll() ?? previous
            router.removeSubscriptions(of: replaced)
            // Clean Start ends the old session, and a Will still waiting is due at its end.
            wills.publishPending(of: replaced)
        }
        return OpenedSession(session: session, sessionPresent: present, previousConnection: previous)
    }

    /// Puts back what the store kept: sessions (detached, their expiry counted from when their
    /// connection ended), subscriptions, retained messages and delayed Wills. Queued and
    /// in-flight messages stay in the store until their client returns. Call it once, before
    /// any listener accepts.
    public func restore(_ state: RestoredBrokerState, on eventLoop: any EventLoop) {
        storage?.resume(fromMessageID: state.nextMessageID)
        for message in state.retained { retained.restore(message) }
        let now = wallClockSeconds()
        var allFilters: [(SubscriptionEntry, MQTTTopicFilter)] = []
        var lostWills: [(Session, WillMessage, UInt32)] = []
        for stored in state.sessions {
            let session = registry.makeSession(
                clientID: stored.clientID, principal: stored.principal, expiryInterval: stored.expiryInterval)
            let filters = stored.subscriptions.compactMap { subscription -> (MQTTTopicFilter, SubscriptionEntry)? in
                guard let filter = try? MQTTTopicFilter(parsing: subscription.filter) else { return nil }
                let entry = SubscriptionEntry(
                    clientID: stored.clientID, options: subscription.options, identifier: subscription.identifier,
                    session: session)
                return (filter, entry)
            }
            session.restore(stored, filters: filters)
            allFilters += filters.map { ($0.1, $0.0) }
            registry.insertRestored(session)
            if stored.expiryInterval != UInt32.max {
                let remaining = max(0, stored.detachedAt + Int64(stored.expiryInterval) - now)
                registry.expire(session, in: remaining, on: eventLoop)
            }
            if let will = stored.will { wills.publishWhenDue(of: session, in: max(0, will.dueAt - now), on: eventLoop) }
            if let armed = stored.armedWill { lostWills.append((session, armed.message, armed.delay)) }
        }
        router.restore(allFilters)
        // The previous process lost these connections: their Wills are due as if they had dropped.
        for (session, will, delay) in lostWills where access.mayPublishWill(session.principal, topic: will.topic) {
            wills.publish(will, delay: delay, session: session, on: eventLoop)
        }
    }

    /// The connection ended. A session with expiry 0 ends with it; others stay for their
    /// expiry interval. [MQTT-3.1.2-23]
    public func connectionClosed(_ connection: any SessionConnection, session: Session, on eventLoop: any EventLoop) {
        registry.connectionClosed(connection, session: session, on: eventLoop)
    }

    /// Publishes the Will of a connection that ended: now, or after its Will Delay Interval
    /// unless the session ends first or a new connection resumes it. [MQTT-3.1.3-9]
    public func publishWill(_ will: WillMessage, delay: UInt32, session: Session, on eventLoop: any EventLoop) {
        wills.publish(will, delay: delay, session: session, on: eventLoop)
    }

    /// Whether queued messages hold more memory than `maximumQueuedBytes` allows.
    var isOverMemoryBudget: Bool {
        configuration.maximumQueuedBytes > 0
            && statistics.heldBytes >= configuration.maximumQueuedBytes
    }

    /// Sessions with a connected client, and those that wait offline for theirs.
    public func sessionCounts() -> (connected: Int, offline: Int) {
        let sessions = registry.all
        let connected = sessions.reduce(0) { $0 + ($1.isConnected ? 1 : 0) }
        return (connected, sessions.count - connected)
    }

    /// The principal of every connected client, for re-checking after an identity change.
    public func connectedPrincipals() -> [(clientID: String, principal: Principal)] {
        registry.all.compactMap { $0.currentConnection == nil ? nil : ($0.clientID, $0.principal) }
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

    /// After an ACL reload: removes every subscription the new rules no longer allow, and
    /// drops queued messages their sessions may no longer read, so that nothing is delivered
    /// against the new rules. Returns how many subscriptions were removed.
    @discardableResult
    public func recheckSubscriptions() -> Int {
        let all = registry.all
        var removed = 0
        for session in all {
            let dropped = session.dropUnreadable(by: access)
            if dropped > 0 {
                statistics.countDrop(.aclRefused, dropped)
                logger.notice(
                    "queued messages dropped: the reloaded ACL no longer lets the client read them",
                    metadata: ["client_id": "\(session.clientID)", "count": "\(dropped)"])
            }
            let principal = session.principal
            for text in session.subscribedFilters {
                guard let filter = try? MQTTTopicFilter(parsing: text),
                    access.authorize(principal, .subscribe, topic: filter.filter) == .reject,
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
        let all = registry.all
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
        _ session: Session, filter: MQTTTopicFilter, options: MQTTPacket.SubscriptionOptions, identifier: UInt32?
    ) -> [RoutedMessage] {
        router.subscribe(session, filter: filter, options: options, identifier: identifier)
    }

    /// Removes the subscription `text` (as the client wrote it, `$share/…` included).
    public func unsubscribe(_ session: Session, filter text: String) -> Bool {
        router.unsubscribe(session, filter: text)
    }

    // MARK: Routing

    /// Routes an accepted message whose topic is split in `topic`; see `Router.publish`.
    @discardableResult
    public func publish(_ message: RoutedMessage, topic: TopicLevels, into batch: inout DeliveryBatch) -> Int {
        var noCache = MatchCache()
        return router.publish(message, topic: topic, matches: &noCache, into: &batch)
    }

    /// Routes a connection's message, reusing its last match while it still holds.
    @discardableResult
    public func publish(
        _ message: RoutedMessage, topic: TopicLevels, matches: inout MatchCache, into batch: inout DeliveryBatch
    ) -> Int {
        router.publish(message, topic: topic, matches: &matches, into: &batch)
    }

    /// Retained messages for a new subscription go to that session alone, flagged retained.
    public func deliverRetained(
        _ messages: [RoutedMessage], to session: Session, options: MQTTPacket.SubscriptionOptions,
        identifier: UInt32?, into batch: inout DeliveryBatch
    ) {
        router.deliverRetained(messages, to: session, options: options, identifier: identifier, into: &batch)
    }
}

extension Session {
    /// Detaches whatever connection is attached and returns it.
    func detachAll() -> (any SessionConnection)? {
        guard let current = currentConnection else { return nil }
        return detach(current) ? current : nil
    }
}
