import GatehouseAuth
public import MQTTCore
import NIOCore

/// The seam for a cluster: where routed messages and subscription changes would go to other
/// nodes. The broker calls it, never a cluster target; nothing implements it yet.
public protocol RouteForwarding: Sendable {
    /// A message a local client published, after local routing.
    func forward(_ message: RoutedMessage)
    func subscriptionAdded(clientID: String, filter: MQTTTopicFilter)
    func subscriptionRemoved(clientID: String, filter: MQTTTopicFilter)
}

/// Where accepted messages go: the subscription index, the retained messages, and delivery
/// into the matching sessions. Shared by every event loop; the publish path takes no lock but
/// each target session's own.
public final class Router: Sendable {
    public let subscriptions = SubscriptionIndex()
    public let retained: RetainedStore
    let access: AccessControl
    let storage: SessionStorage?
    let forwarding: (any RouteForwarding)?

    init(
        access: AccessControl, store: (any BrokerStore)?, storage: SessionStorage?,
        forwarding: (any RouteForwarding)?
    ) {
        self.access = access
        self.retained = RetainedStore(store: store)
        self.storage = storage
        self.forwarding = forwarding
    }

    // MARK: Subscriptions

    /// Records a subscription and returns the retained messages it should receive.
    func subscribe(
        _ session: Session,
        filter: MQTTTopicFilter,
        options: MQTTPacket.SubscriptionOptions,
        identifier: UInt32?
    ) -> [RoutedMessage] {
        let entry = SubscriptionEntry(
            clientID: session.clientID, options: options, identifier: identifier, session: session)
        let existed = session.recordSubscription(entry, filter: filter)
        subscriptions.update { trie in trie.insert(entry, filter: filter) }
        if !existed { forwarding?.subscriptionAdded(clientID: session.clientID, filter: filter) }
        // A new shared subscription gets no retained messages (5.0 §4.8.2).
        if filter.isShared { return [] }
        switch options.retainHandling {
        case .sendOnSubscribe: return retained.matching(filter: filter.filter)
        case .sendOnNewSubscription: return existed ? [] : retained.matching(filter: filter.filter)
        case .doNotSend: return []
        }
    }

    /// Removes the subscription `text` (as the client wrote it, `$share/…` included).
    func unsubscribe(_ session: Session, filter text: String) -> Bool {
        guard session.forgetSubscription(filter: text), let filter = try? MQTTTopicFilter(parsing: text) else {
            return false
        }
        subscriptions.update { trie in trie.remove(clientID: session.clientID, filter: filter) }
        forwarding?.subscriptionRemoved(clientID: session.clientID, filter: filter)
        return true
    }

    /// Takes an ended session's subscriptions out of the index.
    func removeSubscriptions(of session: Session) {
        let filters = session.subscribedFilters.compactMap { try? MQTTTopicFilter(parsing: $0) }
        guard !filters.isEmpty else { return }
        subscriptions.update { trie in
            for filter in filters { trie.remove(clientID: session.clientID, filter: filter) }
        }
        for filter in filters { forwarding?.subscriptionRemoved(clientID: session.clientID, filter: filter) }
    }

    /// Puts back the subscriptions of restored sessions, in one rebuild of the index.
    func restore(_ entries: [(SubscriptionEntry, MQTTTopicFilter)]) {
        subscriptions.update { trie in trie.insert(contentsOf: entries) }
    }

    // MARK: Routing

    /// Routes an accepted message to every matching session the subscriber may read it in.
    /// Connections to wake go into `batch`, so the caller can wake each event loop once per
    /// read cycle; `matches` is the publisher's last match. Returns how many sessions it reached.
    @discardableResult
    func publish(
        _ message: RoutedMessage, topic: TopicLevels, matches: inout MatchCache, into batch: inout DeliveryBatch
    ) -> Int {
        if message.retain, retained.store(message) { batch.wroteToStore = true }
        defer { forwarding?.forward(message) }
        let match = subscriptions.matchAll(
            topic: topic, publisherClientID: message.publisherClientID, cache: &matches)
        guard !match.isEmpty else { return 0 }
        var reached = 0
        // Fan-out: encode the shared QoS 0 forms once instead of once per subscriber.
        let clients = match.deliveries.count + match.sharedGroups.count
        var message = clients > 1 ? message.encodingSharedForms() : message
        // A QoS 0 message to a few clients waits for the end of the read cycle, so that each
        // session's lock is taken once per cycle; a fan-out takes each lock once per message anyway.
        let mayWait = message.qos == .atMostOnce && clients <= DeliveryBatch.waitingClientsLimit
        for delivery in match.deliveries {
            guard let session = delivery.session else { continue }
            reached += enqueue(&message, delivery, topic: topic, to: session, mayWait: mayWait, into: &batch)
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
            reached += enqueue(&message, Delivery(chosen), topic: topic, to: session, mayWait: mayWait, into: &batch)
        }
        if let id = message.storedID { storage?.store.append(.messageRouted(id)) }
        return reached
    }

    /// Routes a message from outside any read cycle (a Will, `$SYS`) and wakes its subscribers.
    func publishNow(_ message: RoutedMessage) {
        var batch = DeliveryBatch()
        var noCache = MatchCache()
        publish(message, topic: TopicLevels(message.topic), matches: &noCache, into: &batch)
        batch.wake()
    }

    /// Queues one delivery if the subscriber may read the topic; returns 1 if it did.
    private func enqueue(
        _ message: inout RoutedMessage,
        _ delivery: Delivery,
        topic: TopicLevels,
        to session: Session,
        mayWait: Bool,
        into batch: inout DeliveryBatch
    ) -> Int {
        let stored = StoredDelivery(
            qos: min(message.qos, delivery.qos),
            retain: delivery.retainAsPublished && message.retain,
            subscriptionIdentifiers: delivery.subscriptionIdentifiers)
        // QoS 0 is neither stored nor acknowledged, so it may wait (counted as reached; its
        // read check comes when it is enqueued).
        if mayWait {
            let queued = QueuedMessage(
                message: message, qos: stored.qos, retain: stored.retain,
                subscriptionIdentifiers: stored.subscriptionIdentifiers)
            batch.deferAtMostOnce(queued, topic: topic, to: session, readPermittedBy: access)
            return 1
        }
        let enqueued = batch.enqueueNow { receipt in
            session.enqueue(&message, stored, topic: topic, readPermittedBy: access, receipt: &receipt)
        }
        return enqueued.accepted ? 1 : 0
    }

    /// Retained messages for a new subscription go to that session alone, flagged retained.
    func deliverRetained(
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
            batch.enqueueNow { _ in
                var noReceipt = PendingReceipt()
                return session.enqueue(
                    &message, delivery, topic: TopicLevels(message.topic), readPermittedBy: access, receipt: &noReceipt)
            }
        }
    }
}

/// What routing within one read cycle leaves for its end: the QoS 0 deliveries to enqueue,
/// the connections to wake (once per event loop), the publishers whose held acknowledgements
/// may go, and whether acknowledgements must wait for the store to commit.
public struct DeliveryBatch {
    /// One session's QoS 0 deliveries, in order, enqueued under one lock.
    private struct DeferredRun {
        let session: Session
        var deliveries: [(queued: QueuedMessage, topic: TopicLevels)]
    }
    private var deferred: [DeferredRun] = []
    private var readAuthorizer: (any Authorizer)?
    private var wakes: [any SessionConnection] = []
    private var fulfilledReceipts: [any SessionConnection] = []
    /// Set when routing wrote to the store; the caller clears it once it has taken a ticket.
    public var wroteToStore = false
    /// The receipt of the message being routed, if its PUBACK may go before the commit.
    var pendingReceipt = PendingReceipt()

    public init() {}

    /// Runs an enqueue that cannot wait, after the QoS 0 deliveries waiting before it, so that
    /// each session's order holds whichever way its deliveries went; `enqueue` gets the
    /// receipt of the message being routed.
    @discardableResult
    mutating func enqueueNow(_ enqueue: (inout PendingReceipt) -> Session.Enqueued) -> Session.Enqueued {
        enqueueDeferred()
        let enqueued = enqueue(&pendingReceipt)
        if let wake = enqueued.wake { wakes.append(wake) }
        if enqueued.stored { wroteToStore = true }
        return enqueued
    }

    /// How many clients a QoS 0 message may reach and still wait for the end of the read cycle.
    static var waitingClientsLimit: Int { 8 }
    static var waitingSessionsLimit: Int { 16 }

    /// Holds a QoS 0 delivery until the end of the read cycle, or until a delivery that must
    /// follow it is enqueued. Each session has one run, found by a short scan: waiting
    /// messages reach few clients.
    mutating func deferAtMostOnce(
        _ queued: QueuedMessage, topic: TopicLevels, to session: Session, readPermittedBy authorizer: any Authorizer
    ) {
        readAuthorizer = authorizer
        if let run = deferred.lastIndex(where: { $0.session === session }) {
            deferred[run].deliveries.append((queued, topic))
            return
        }
        // Many sessions in one cycle (a gateway publishing for many devices): enqueue those
        // waiting rather than scan a long list for every delivery.
        if deferred.count >= Self.waitingSessionsLimit { enqueueDeferred() }
        deferred.append(DeferredRun(session: session, deliveries: [(queued, topic)]))
    }

    /// Enqueues the held QoS 0 deliveries, so that what is enqueued next comes after them.
    private mutating func enqueueDeferred() {
        guard !deferred.isEmpty, let readAuthorizer else { return }
        for run in deferred {
            if let wake = run.session.enqueueAtMostOnce(run.deliveries, readPermittedBy: readAuthorizer) {
                wakes.append(wake)
            }
        }
        deferred.removeAll(keepingCapacity: true)
    }

    mutating func addFulfilledReceipt(_ publisher: any SessionConnection) {
        if let last = fulfilledReceipts.last, last === publisher { return }
        fulfilledReceipts.append(publisher)
    }

    /// Empties the batch and hands back what it held. A connection wakes its batch as
    /// `deliveries.take().wake()`, so that what the wake-up runs (its own drain among them) may
    /// use the batch again.
    public mutating func take() -> DeliveryBatch {
        defer { self = DeliveryBatch() }
        return self
    }

    /// Enqueues what was held, then wakes each connection once and tells each publisher, with
    /// one task per event loop.
    public consuming func wake() {
        enqueueDeferred()
        if !wakes.isEmpty { onTheirLoops(wakes) { $0.sessionHasOutput() } }
        if !fulfilledReceipts.isEmpty { onTheirLoops(fulfilledReceipts) { $0.deliveryReceiptsFulfilled() } }
    }
}

/// Calls `body` for each connection on its event loop, with one task per loop rather than
/// one per connection.
private func onTheirLoops(
    _ connections: [any SessionConnection], _ body: @escaping @Sendable (any SessionConnection) -> Void
) {
    // One connection (fan-in's usual case) needs no grouping.
    if connections.count == 1 {
        let connection = connections[0]
        if connection.eventLoop.inEventLoop {
            body(connection)
        } else {
            connection.eventLoop.execute { body(connection) }
        }
        return
    }
    var byLoop: [ObjectIdentifier: (any EventLoop, [any SessionConnection])] = [:]
    for connection in connections {
        let key = ObjectIdentifier(connection.eventLoop)
        byLoop[key, default: (connection.eventLoop, [])].1.append(connection)
    }
    for (loop, batch) in byLoop.values {
        if loop.inEventLoop {
            for connection in batch { body(connection) }
        } else {
            loop.execute { for connection in batch { body(connection) } }
        }
    }
}
