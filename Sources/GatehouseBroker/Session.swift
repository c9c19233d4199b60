import Atomics
import DequeModule
import Foundation
public import GatehouseAuth
import Logging
public import MQTTCore
import NIOConcurrencyHelpers
public import NIOCore

/// The connection a session is attached to. Its methods are called on its event loop.
public protocol SessionConnection: AnyObject, Sendable {
    var eventLoop: any EventLoop { get }
    /// The session has messages to send: drain them and flush once.
    func sessionHasOutput()
    /// The broker ends the connection (session taken over, shutdown, revocation).
    func disconnect(reason: MQTTReasonCode)
    /// Subscribers acknowledged every stored copy of a message whose PUBACK this connection
    /// holds (`DeliveryReceipt`): send the acknowledgements that may go now.
    func deliveryReceiptsFulfilled()
}

extension SessionConnection {
    public func deliveryReceiptsFulfilled() {}
}

/// Sent toward the head of the pipeline once CONNECT is accepted: the transport stops counting
/// the connection as pending (`PendingConnects`).
public struct MQTTConnectAccepted: Sendable {
    public init() {}
}

/// A message waiting for its turn in the in-flight window.
struct QueuedMessage: Sendable {
    var message: RoutedMessage
    var qos: MQTTQoS
    var retain: Bool
    var subscriptionIdentifiers: [UInt32]
    /// The session's count of deliveries when it took this one: its order, and its key in the store.
    var sequence: UInt64 = 0
    /// Set on a stored delivery whose publisher's PUBACK may go once it is acknowledged.
    var receipt: DeliveryReceipt?

    var storedDelivery: StoredDelivery {
        StoredDelivery(qos: qos, retain: retain, subscriptionIdentifiers: subscriptionIdentifiers)
    }

    /// What the delivery counts against the store's limit: payload, topic and the rows around them.
    var storedSize: Int {
        message.payload.readableBytes + message.topic.utf8.count + StoredBacklog.overheadPerDelivery
    }
}

/// The durable store as the sessions of one broker share it, with the ids of stored messages.
final class SessionStorage: Sendable {
    let store: any BrokerStore
    private let nextMessageID: ManagedAtomic<UInt64>
    /// What the stored deliveries hold, counted per delivery (a shared message counts once per
    /// session, an upper bound), against `maximumBytes` (0: no limit).
    private let storedBytes = ManagedAtomic(0)
    let maximumBytes: Int

    init(store: any BrokerStore, maximumBytes: Int = 0, nextMessageID: StoredMessageID = 1) {
        self.store = store
        self.maximumBytes = maximumBytes
        self.nextMessageID = ManagedAtomic(nextMessageID)
    }

    var bytesStored: Int { storedBytes.load(ordering: .relaxed) }

    /// Whether a new delivery of `bytes` fits. Sessions check without a shared lock, so the limit
    /// may be passed by the deliveries being made at that moment, never by more.
    func hasRoom(for bytes: Int) -> Bool {
        maximumBytes == 0 || storedBytes.load(ordering: .relaxed) + bytes <= maximumBytes
    }

    func add(_ bytes: Int) {
        storedBytes.wrappingIncrement(by: bytes, ordering: .relaxed)
    }

    func release(_ bytes: Int) {
        storedBytes.wrappingDecrement(by: bytes, ordering: .relaxed)
    }

    func resume(fromMessageID next: StoredMessageID) {
        nextMessageID.store(next, ordering: .relaxed)
    }

    /// Gives the message an id and stores it, unless it has one already.
    func save(_ message: inout RoutedMessage) {
        guard message.storedID == nil else { return }
        let id = nextMessageID.loadThenWrappingIncrement(ordering: .relaxed)
        message.storedID = id
        store.append(.messageSaved(id, message))
    }
}

/// Seconds since 1970, as the store keeps times.
func wallClockSeconds() -> Int64 { Int64(Date().timeIntervalSince1970) }

/// What the connection writes next for its session.
enum OutgoingPacket: Sendable {
    case publish(QueuedMessage, packetIdentifier: UInt16, duplicate: Bool)
    case pubrel(UInt16)
}

/// One client's session: subscriptions, queued and in-flight messages, QoS 2 state. It
/// outlives connections when the client asks for a persistent session.
///
/// Its state is behind its own lock, because publishers on any event loop enqueue into it;
/// the lock is per session, so no two sessions ever contend.
public final class Session: @unchecked Sendable {
    public let clientID: String

    private struct InflightMessage {
        var queued: QueuedMessage
        /// After PUBREC the message is done with; only PUBREL/PUBCOMP remain.
        var released: Bool
    }

    private let lock = NIOLock()
    // Guarded by `lock`:
    private var connection: (any SessionConnection)?
    private var _principal: Principal
    private var _expiryInterval: UInt32
    private var receiveMaximum: Int
    /// By the filter as the client wrote it (`$share/g/a` and `a` are two subscriptions).
    private var subscriptionFilters: [String: SubscriptionEntry] = [:]
    /// Empty without an allocation: most sessions never queue (CircularBuffer's default 16
    /// slots were a third of an idle connection's memory, and even one slot is 176 bytes).
    private var queue = Deque<QueuedMessage>()
    private var inflight: [UInt16: InflightMessage] = [:]
    /// Deliveries restored sessions left in the store, read when the client returns; until
    /// they are in memory nothing is sent, so that order and packet identifiers hold.
    private var backlog: StoredBacklog?
    private var loadingBacklog = false
    private var inboundQoS2: Set<UInt16> = []
    /// Read decisions for this session's principal, under `lock`.
    private var readDecisions = DecisionCache()
    private var nextPacketIdentifier: UInt16 = 1
    private var nextSequence: UInt64 = 0
    private var drainScheduled = false
    private var resendInflight = false
    private var droppedMessages = 0
    /// What the queued and in-flight messages hold, counted in the broker's memory budget.
    private var heldBytes = 0
    /// A Will waiting out its delay; a new connection to the session cancels it.
    private var pendingWill: Boxed<(message: WillMessage, dueAt: Int64)>?
    /// The connected client's Will, kept in the store so that a crash of the broker does not lose it.
    private var armedWill: Boxed<(message: WillMessage, delay: UInt32)>?
    /// How many connections have attached, so that a timer set at one disconnect can tell
    /// whether the session has been resumed (and perhaps left again) since.
    private var attachments: UInt64 = 0
    /// The session ended: it writes nothing more to the store, whoever still holds it.
    private var retired = false
    /// Whether the store holds this session; while it does, every change is written there too.
    private var inStore = false
    private let maximumQueuedMessages: Int
    private let statistics: BrokerStatistics?
    private let storage: SessionStorage?

    init(
        clientID: String,
        principal: Principal,
        expiryInterval: UInt32,
        maximumQueuedMessages: Int,
        statistics: BrokerStatistics? = nil,
        storage: SessionStorage? = nil
    ) {
        self.storage = storage
        self.statistics = statistics
        self.clientID = clientID
        self._principal = principal
        self._expiryInterval = expiryInterval
        self.receiveMaximum = 1
        self.maximumQueuedMessages = maximumQueuedMessages
    }

    public var principal: Principal { lock.withLock { _principal } }
    public var expiryInterval: UInt32 {
        get { lock.withLock { _expiryInterval } }
        set {
            lock.withLock {
                _expiryInterval = newValue
                syncStoreLocked()
            }
        }
    }
    /// Whether the session's state is kept in the durable store.
    public var isStored: Bool { lock.withLock { inStore } }
    public var isConnected: Bool { lock.withLock { connection != nil } }
    public var subscriptionCount: Int { lock.withLock { subscriptionFilters.count } }
    public var queuedCount: Int { lock.withLock { queue.count + (backlog?.count ?? 0) } }
    public var droppedCount: Int { lock.withLock { droppedMessages } }

    /// Attaches a new connection; in-flight messages are sent again (with DUP) on its first
    /// drain. Returns the connection it replaces, if any.
    func attach(
        _ newConnection: any SessionConnection,
        principal: Principal,
        receiveMaximum: Int,
        expiryInterval: UInt32
    ) -> (any SessionConnection)? {
        lock.withLock {
            let previous = connection
            connection = newConnection
            _principal = principal
            readDecisions = DecisionCache()  // decided for the previous principal
            self.receiveMaximum = max(1, receiveMaximum)
            _expiryInterval = expiryInterval
            resendInflight = !inflight.isEmpty
            drainScheduled = false
            attachments += 1
            if inStore && expiryInterval > 0 {
                storage?.store.append(
                    .sessionOpened(clientID: clientID, principal: principal, expiryInterval: expiryInterval))
            }
            syncStoreLocked()
            return previous
        }
    }

    /// A re-authenticated connection's new principal (same identity, new roles or expiry):
    /// decisions from now on are made for it, and a stored session keeps it.
    func replacePrincipal(_ principal: Principal) {
        lock.withLock {
            _principal = principal
            readDecisions = DecisionCache()
            if inStore {
                storage?.store.append(
                    .sessionOpened(clientID: clientID, principal: principal, expiryInterval: _expiryInterval))
            }
        }
    }

    /// The session ended (expired, or replaced by a clean start): the store forgets it, and
    /// deliveries that still reach this object are not written.
    func retire() {
        lock.withLock {
            retired = true
            syncStoreLocked()
            // Deliveries that still reach a retired session are not counted either.
            if let statistics { statistics.add(statistics.queuedBytes, -heldBytes) }
            heldBytes = 0
        }
    }

    private func holdLocked(_ queued: QueuedMessage) {
        guard !retired else { return }
        heldBytes += queued.storedSize
        if let statistics { statistics.add(statistics.queuedBytes, queued.storedSize) }
    }

    private func releaseLocked(_ queued: QueuedMessage) {
        releaseLocked(bytes: queued.storedSize)
    }

    private func releaseLocked(bytes: Int) {
        guard !retired, bytes != 0 else { return }
        heldBytes -= bytes
        if let statistics { statistics.add(statistics.queuedBytes, -bytes) }
    }

    /// Brings the store in line with whether the session should be there: a clean session
    /// never is; one that becomes persistent is written whole; one that stops is deleted.
    private func syncStoreLocked() {
        guard let storage else { return }
        let wanted = _expiryInterval > 0 && !retired
        if wanted && !inStore {
            writeWholeLocked(to: storage)
        } else if !wanted && inStore {
            inStore = false
            storage.store.append(.sessionDeleted(clientID: clientID))
            var held = 0
            for queued in queue where queued.qos != .atMostOnce { held += queued.storedSize }
            for entry in inflight.values { held += entry.queued.storedSize }
            if let backlog { held += backlog.bytes }
            backlog = nil  // the store deletes its rows with the session
            storage.release(held)
        }
    }

    private func writeWholeLocked(to storage: SessionStorage) {
        let store = storage.store
        inStore = true
        store.append(.sessionOpened(clientID: clientID, principal: _principal, expiryInterval: _expiryInterval))
        if connection == nil {
            store.append(.sessionDetached(clientID: clientID, at: wallClockSeconds(), expiryInterval: _expiryInterval))
        }
        for (filter, entry) in subscriptionFilters {
            store.append(
                .subscriptionSaved(
                    clientID: clientID, filter: filter, options: entry.options, identifier: entry.identifier))
        }
        for identifier in inboundQoS2 {
            store.append(.inboundQoS2Received(clientID: clientID, packetIdentifier: identifier))
        }
        for (identifier, var entry) in inflight {
            writeWholeDeliveryLocked(&entry.queued, to: storage)
            store.append(
                .deliverySent(clientID: clientID, sequence: entry.queued.sequence, packetIdentifier: identifier))
            if entry.released { store.append(.deliveryReleased(clientID: clientID, sequence: entry.queued.sequence)) }
            inflight[identifier] = entry
        }
        for index in queue.indices where queue[index].qos != .atMostOnce {
            writeWholeDeliveryLocked(&queue[index], to: storage)
        }
        if let pendingWill = pendingWill?.value {
            store.append(.willScheduled(clientID: clientID, message: pendingWill.message, dueAt: pendingWill.dueAt))
        }
        if let armedWill = armedWill?.value {
            store.append(.willArmed(clientID: clientID, message: armedWill.message, delay: armedWill.delay))
        }
    }

    /// Writes a delivery that was only in memory; its message is written again too (the store
    /// ignores a message it has), as the store may have left it out while nothing held it.
    private func writeWholeDeliveryLocked(_ queued: inout QueuedMessage, to storage: SessionStorage) {
        if let id = queued.message.storedID { storage.store.append(.messageSaved(id, queued.message)) }
        writeDeliveryLocked(&queued, to: storage)
    }

    /// Stores the delivery (and its message, once for all sessions). Its bytes count against
    /// the store's limit, already checked by the caller where the limit applies.
    private func writeDeliveryLocked(_ queued: inout QueuedMessage, to storage: SessionStorage) {
        storage.add(queued.storedSize)
        storage.save(&queued.message)
        guard let id = queued.message.storedID else { return }
        storage.store.append(
            .deliveryQueued(clientID: clientID, sequence: queued.sequence, message: id, delivery: queued.storedDelivery)
        )
    }

    /// Appends a change while the store holds this session.
    private func recordLocked(_ change: @autoclosure () -> StoreChange) {
        guard inStore, let storage else { return }
        storage.store.append(change())
    }

    /// Detaches `oldConnection` if it is still the current one; returns whether it was.
    func detach(_ oldConnection: any SessionConnection) -> Bool {
        lock.withLock {
            guard connection === oldConnection else { return false }
            connection = nil
            recordLocked(.sessionDetached(clientID: clientID, at: wallClockSeconds(), expiryInterval: _expiryInterval))
            return true
        }
    }

    var currentConnection: (any SessionConnection)? { lock.withLock { connection } }

    /// Marks the present moment for a timer: see `hasStayedDetached(since:)`.
    var attachmentCount: UInt64 { lock.withLock { attachments } }

    /// True if no connection has attached since `count` was read and none is attached now.
    func hasStayedDetached(since count: UInt64) -> Bool {
        lock.withLock { connection == nil && attachments == count }
    }

    func isAttached(to candidate: any SessionConnection) -> Bool {
        lock.withLock { connection === candidate }
    }

    // MARK: Delayed Will

    /// The connection has a Will: the store keeps it while the session is persistent.
    func armWill(_ will: WillMessage, delay: UInt32) {
        lock.withLock {
            armedWill = Boxed((will, delay))
            recordLocked(.willArmed(clientID: clientID, message: will, delay: delay))
        }
    }

    /// The connection ended: its Will is published, scheduled or discarded from here on.
    func disarmWill() {
        lock.withLock {
            guard armedWill != nil else { return }
            armedWill = nil
            recordLocked(.willDisarmed(clientID: clientID))
        }
    }

    /// `dueAt` is in seconds since 1970, for the store.
    func setPendingWill(_ will: WillMessage, dueAt: Int64) {
        lock.withLock {
            pendingWill = Boxed((will, dueAt))
            recordLocked(.willScheduled(clientID: clientID, message: will, dueAt: dueAt))
        }
    }

    /// Takes the delayed Will, if it is still waiting (and, given `since`, only if no
    /// connection has attached since that count was read).
    func takePendingWill(since count: UInt64? = nil) -> WillMessage? {
        lock.withLock {
            if let count, attachments != count { return nil }
            guard let will = pendingWill?.value else { return nil }
            pendingWill = nil
            recordLocked(.willCancelled(clientID: clientID))
            return will.message
        }
    }

    // MARK: Subscriptions

    func recordSubscription(_ entry: SubscriptionEntry, filter: MQTTTopicFilter) -> Bool {
        lock.withLock {
            recordLocked(
                .subscriptionSaved(
                    clientID: clientID, filter: filter.text, options: entry.options, identifier: entry.identifier))
            return subscriptionFilters.updateValue(entry, forKey: filter.text) != nil
        }
    }

    func forgetSubscription(filter: String) -> Bool {
        lock.withLock {
            guard subscriptionFilters.removeValue(forKey: filter) != nil else { return false }
            recordLocked(.subscriptionDeleted(clientID: clientID, filter: filter))
            return true
        }
    }

    func hasSubscription(_ filter: MQTTTopicFilter) -> Bool {
        lock.withLock { subscriptionFilters[filter.text] != nil }
    }

    /// The session's filters as the client wrote them.
    var subscribedFilters: [String] { lock.withLock { Array(subscriptionFilters.keys) } }

    // MARK: Outbound

    struct Enqueued {
        var accepted = false
        /// The connection to wake, if this is the first delivery since the last drain.
        var wake: (any SessionConnection)?
        /// The delivery was written to the store: an acknowledgement of it waits for the commit.
        var stored = false
    }

    /// Queues a delivery if `authorizer` lets this session's principal read its topic (checked
    /// under the same lock, one lock per delivery). A persistent session stores the message,
    /// once for all sessions: `message` carries its id back to the caller.
    func enqueue(
        _ message: inout RoutedMessage,
        _ delivery: StoredDelivery,
        topic: TopicLevels,
        readPermittedBy authorizer: any Authorizer,
        receipt pendingReceipt: inout PendingReceipt
    ) -> Enqueued {
        lock.withLock {
            guard readDecisions.decide(authorizer, _principal, .read, topic: topic) == .accept else {
                return Enqueued()
            }
            var result = Enqueued(accepted: true)
            var queued = QueuedMessage(
                message: message, qos: delivery.qos, retain: delivery.retain,
                subscriptionIdentifiers: delivery.subscriptionIdentifiers)
            // Offline, only QoS 1 and 2 are kept (as Mosquitto does by default).
            if connection == nil && queued.qos == .atMostOnce { return result }
            let storage = inStore && queued.qos != .atMostOnce ? self.storage : nil
            // The store full is checked first, so that nothing queued is pushed out for a refused message.
            if let storage, !storage.hasRoom(for: queued.storedSize) {
                recordDrop()
                return result
            }
            guard makeRoomLocked(for: queued) else { return result }
            takeSequenceLocked(&queued)
            if let storage {
                writeDeliveryLocked(&queued, to: storage)
                message.storedID = queued.message.storedID  // the next session refers to the same row
                result.stored = true
                if let receipt = pendingReceipt.forStoredCopy() {
                    if connection == nil {
                        receipt.storedOffline()
                    } else {
                        receipt.expectAcknowledgement()
                        queued.receipt = receipt
                    }
                }
            }
            queue.append(queued)
            holdLocked(queued)
            result.wake = wakeLocked()
            return result
        }
    }

    /// Queues one read cycle's QoS 0 deliveries to this session under one lock (each still
    /// read-checked): nothing of them is stored or acknowledged, so they may wait for the
    /// cycle's end, and the publishers of a fan-in stop contending for the subscriber's lock
    /// once per message. Returns the connection to wake, if any.
    func enqueueAtMostOnce(
        _ deliveries: [(queued: QueuedMessage, topic: TopicLevels)], readPermittedBy authorizer: any Authorizer
    ) -> (any SessionConnection)? {
        lock.withLock {
            // Offline, QoS 0 is not kept.
            guard connection != nil else { return nil }
            var held = 0
            for var (queued, topic) in deliveries {
                guard readDecisions.decide(authorizer, _principal, .read, topic: topic) == .accept,
                    makeRoomLocked(for: queued)
                else { continue }
                takeSequenceLocked(&queued)
                held += queued.storedSize
                queue.append(queued)
            }
            if !retired {
                heldBytes += held
                if let statistics { statistics.add(statistics.queuedBytes, held) }
            }
            return wakeLocked()
        }
    }

    private func takeSequenceLocked(_ queued: inout QueuedMessage) {
        queued.sequence = nextSequence
        nextSequence += 1
    }

    /// The connection to wake for a new delivery: only the first since the last drain.
    private func wakeLocked() -> (any SessionConnection)? {
        guard let connection, !drainScheduled else { return nil }
        drainScheduled = true
        return connection
    }

    /// After an ACL reload: drops the queued (not yet sent) messages this session's principal
    /// may no longer read, so that none is delivered against the new rules. Returns how many.
    func dropUnreadable(by authorizer: any Authorizer) -> Int {
        lock.withLock {
            let before = queue.count
            var kept = Deque<QueuedMessage>(minimumCapacity: before)
            for queued in queue {
                if authorizer.authorize(_principal, .read, topic: queued.message.topic) == .accept {
                    kept.append(queued)
                } else {
                    forgetDeliveryLocked(queued)
                    releaseLocked(queued)
                }
            }
            guard kept.count != before else { return 0 }
            queue = kept
            return before - kept.count
        }
    }

    /// Whether `queued` fits: a full queue drops QoS 0 first, the new message's or the oldest
    /// queued one's.
    private func makeRoomLocked(for queued: QueuedMessage) -> Bool {
        guard queue.count + (backlog?.count ?? 0) >= maximumQueuedMessages else { return true }
        recordDrop()
        guard queued.qos != .atMostOnce, let index = queue.firstIndex(where: { $0.qos == .atMostOnce }) else {
            return false
        }
        releaseLocked(queue.remove(at: index))
        return true
    }

    private func forgetDeliveryLocked(_ queued: QueuedMessage) {
        guard queued.qos != .atMostOnce, inStore, let storage else { return }
        storage.store.append(.deliveryDeleted(clientID: clientID, sequence: queued.sequence))
        storage.release(queued.storedSize)
    }

    /// Takes what may be sent now: in-flight messages to resend, then queued messages while
    /// the client's receive maximum allows. [MQTT-4.9.0-2]
    func takeOutgoing(now: NIODeadline) -> [OutgoingPacket] {
        lock.withLock {
            drainScheduled = false
            guard backlog == nil else { return [] }
            var outgoing: [OutgoingPacket] = []
            if resendInflight {
                resendInflight = false
                for (identifier, entry) in inflight.sorted(by: { $0.value.queued.sequence < $1.value.queued.sequence })
                {
                    outgoing.append(
                        entry.released
                            ? .pubrel(identifier)
                            : .publish(entry.queued, packetIdentifier: identifier, duplicate: true))
                }
            }
            outgoing.reserveCapacity(queue.count)
            // The drain's 'sent' records go to the store in one append.
            let recordsSent = inStore && storage != nil
            var sent: [StoreChange] = []
            var released = 0
            defer { releaseLocked(bytes: released) }
            // Each delivery is moved out of the queue, not copied and then removed: a copy costs
            // a retain and a release of every reference the message holds.
            while !queue.isEmpty {
                let head = queue.startIndex
                if queue[head].message.hasExpired(at: now) {
                    statistics?.countDrop(.expired)
                    let next = queue.removeFirst()
                    forgetDeliveryLocked(next)
                    released += next.storedSize
                    continue
                }
                if queue[head].qos == .atMostOnce {
                    let next = queue.removeFirst()
                    released += next.storedSize
                    outgoing.append(.publish(next, packetIdentifier: 0, duplicate: false))
                    continue
                }
                guard inflight.count < receiveMaximum else { break }
                let next = queue.removeFirst()
                let identifier = allocatePacketIdentifier()
                inflight[identifier] = InflightMessage(queued: next, released: false)
                if recordsSent {
                    sent.append(
                        .deliverySent(clientID: clientID, sequence: next.sequence, packetIdentifier: identifier))
                }
                outgoing.append(.publish(next, packetIdentifier: identifier, duplicate: false))
            }
            if let storage, !sent.isEmpty { storage.store.append(contentsOf: sent) }
            return outgoing
        }
    }

    private func recordDrop() {
        droppedMessages += 1
        statistics?.countDrop(.queueFull)
    }

    private func allocatePacketIdentifier() -> UInt16 {
        // The window is at most 65,535, so a free identifier always exists.
        while inflight[nextPacketIdentifier] != nil || nextPacketIdentifier == 0 {
            nextPacketIdentifier &+= 1
        }
        let identifier = nextPacketIdentifier
        nextPacketIdentifier &+= 1
        return identifier
    }

    /// PUBACK, or PUBCOMP, or a failed PUBREC: the message leaves the window. A publisher whose
    /// held PUBACK waited for this copy goes into `batch`, to be told at the end of the cycle.
    func completeOutbound(_ identifier: UInt16, into batch: inout DeliveryBatch) -> Bool {
        completeOutbound(CollectionOfOne(identifier), into: &batch)
    }

    /// One read cycle's completions under one lock, their store changes in one append: a
    /// subscriber acknowledging a fan-in would otherwise take the lock the publishers enqueue
    /// under once per message. Returns whether any identifier was in flight.
    func completeOutbound(_ identifiers: some Sequence<UInt16>, into batch: inout DeliveryBatch) -> Bool {
        lock.withLock {
            var completed = false
            var released = 0
            var deleted: [StoreChange] = []
            let stored = inStore && storage != nil
            for identifier in identifiers {
                guard let done = inflight.removeValue(forKey: identifier) else { continue }
                completed = true
                released += done.queued.storedSize
                // Only QoS 1 and 2 are ever in flight.
                if stored {
                    deleted.append(.deliveryDeleted(clientID: clientID, sequence: done.queued.sequence))
                }
                if let publisher = done.queued.receipt?.acknowledged() { batch.addFulfilledReceipt(publisher) }
            }
            if let storage, !deleted.isEmpty {
                storage.store.append(contentsOf: deleted)
                storage.release(released)
            }
            releaseLocked(bytes: released)
            return completed
        }
    }

    /// PUBREC: the message is delivered; PUBREL follows. Returns false for an unknown id.
    func releaseOutbound(_ identifier: UInt16) -> Bool {
        lock.withLock {
            guard let entry = inflight[identifier] else { return false }
            if !entry.released {
                inflight[identifier]?.released = true
                recordLocked(.deliveryReleased(clientID: clientID, sequence: entry.queued.sequence))
            }
            return true
        }
    }

    // MARK: Inbound QoS 2

    enum InboundQoS2 {
        /// Route it, and hold its packet identifier until PUBREL.
        case new
        /// A resend of one not yet released: acknowledge, do not route again. [MQTT-4.3.3-9]
        case duplicate
        /// A new one beyond the Receive Maximum the broker announced. [MQTT-3.3.4-9]
        case overLimit
    }

    /// Records an inbound QoS 2 PUBLISH; a resend of a held identifier is never over the limit.
    func receiveInboundQoS2(_ identifier: UInt16, limit: Int) -> InboundQoS2 {
        lock.withLock {
            if inboundQoS2.contains(identifier) { return .duplicate }
            guard inboundQoS2.count < limit else { return .overLimit }
            inboundQoS2.insert(identifier)
            recordLocked(.inboundQoS2Received(clientID: clientID, packetIdentifier: identifier))
            return .new
        }
    }

    func releaseInboundQoS2(_ identifier: UInt16) -> Bool {
        lock.withLock {
            guard inboundQoS2.remove(identifier) != nil else { return false }
            recordLocked(.inboundQoS2Released(clientID: clientID, packetIdentifier: identifier))
            return true
        }
    }
}

extension Session {
    /// Fills a new session from the store at start-up; it comes back detached, its deliveries
    /// still in the store until its client returns (`startLoadingBacklog`).
    func restore(_ stored: RestoredBrokerState.Session, filters: [(MQTTTopicFilter, SubscriptionEntry)]) {
        lock.withLock {
            inStore = true
            for (filter, entry) in filters { subscriptionFilters[filter.text] = entry }
            inboundQoS2 = Set(stored.inboundQoS2)
            if let stored = stored.backlog, stored.count > 0 {
                backlog = stored
                storage?.add(stored.bytes)
                nextSequence = stored.lastSequence + 1
            }
            if let will = stored.will { pendingWill = Boxed(will) }
        }
    }

    /// Reads the session's backlog from the store, once, now that a client is attached. The
    /// queued messages its principal may no longer read are dropped (the ACL may have changed
    /// since they were queued); in-flight ones go out again with DUP.
    func startLoadingBacklog(readPermittedBy authorizer: any Authorizer, on eventLoop: any EventLoop, logger: Logger) {
        let request: (StoredBacklog, any BrokerStore)? = lock.withLock {
            guard let backlog, !loadingBacklog, let storage else { return nil }
            loadingBacklog = true
            return (backlog, storage.store)
        }
        guard let (backlog, store) = request else { return }
        store.loadBacklog(of: clientID, backlog, on: eventLoop) { [self] result in
            switch result {
            case .success(let deliveries):
                guard let wake = installBacklog(backlog, deliveries, readPermittedBy: authorizer) else { return }
                wake.eventLoop.execute { wake.sessionHasOutput() }
            case .failure(let error):
                // Kept in the store. The connection gets nothing until the read succeeds, so it is
                // tried again while a client is attached (a returning client also starts one).
                let attached = lock.withLock {
                    loadingBacklog = false
                    return connection != nil
                }
                logger.error(
                    "reading a session's stored messages failed; retrying in 1 s",
                    metadata: ["client": "\(clientID)", "error": "\(error)"])
                guard attached else { return }
                eventLoop.scheduleTask(in: .seconds(1)) { [self] in
                    startLoadingBacklog(readPermittedBy: authorizer, on: eventLoop, logger: logger)
                }
            }
        }
    }

    /// Puts the read deliveries before whatever was queued since start-up. Returns the
    /// connection to wake, if one is attached.
    private func installBacklog(
        _ read: StoredBacklog, _ deliveries: [RestoredBrokerState.Delivery], readPermittedBy authorizer: any Authorizer
    ) -> (any SessionConnection)? {
        lock.withLock {
            loadingBacklog = false
            // The session ended meanwhile: the store deleted these rows with it.
            guard backlog == read, let storage else { return nil }
            backlog = nil
            storage.release(read.bytes)
            var restored = Deque<QueuedMessage>(minimumCapacity: deliveries.count + queue.count)
            for delivery in deliveries {
                var message = delivery.message
                message.storedID = delivery.messageID
                let queued = QueuedMessage(
                    message: message, qos: delivery.delivery.qos, retain: delivery.delivery.retain,
                    subscriptionIdentifiers: delivery.delivery.subscriptionIdentifiers, sequence: delivery.sequence)
                storage.add(queued.storedSize)
                switch delivery.state {
                case .queued:
                    if authorizer.authorize(_principal, .read, topic: message.topic) == .accept {
                        restored.append(queued)
                        holdLocked(queued)
                    } else {
                        forgetDeliveryLocked(queued)
                    }
                case .sent, .released:
                    inflight[delivery.packetIdentifier] = InflightMessage(
                        queued: queued, released: delivery.state == .released)
                    holdLocked(queued)
                }
            }
            restored.append(contentsOf: queue)
            queue = restored
            resendInflight = !inflight.isEmpty
            guard let connection, !drainScheduled else { return nil }
            drainScheduled = true
            return connection
        }
    }
}
