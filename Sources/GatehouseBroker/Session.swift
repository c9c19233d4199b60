public import GatehouseAuth
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
}

/// A message waiting for its turn in the in-flight window.
struct QueuedMessage: Sendable {
    var message: RoutedMessage
    var qos: MQTTQoS
    var retain: Bool
    var subscriptionIdentifiers: [UInt32]
}

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
        var sequence: UInt64
    }

    private let lock = NIOLock()
    // Guarded by `lock`:
    private var connection: (any SessionConnection)?
    private var _principal: Principal
    private var _expiryInterval: UInt32
    private var receiveMaximum: Int
    /// By the filter as the client wrote it (`$share/g/a` and `a` are two subscriptions).
    private var subscriptionFilters: [String: SubscriptionEntry] = [:]
    /// Starts at one slot and doubles: most sessions never queue, and the default 16 slots
    /// were a third of an idle connection's memory.
    private var queue = CircularBuffer<QueuedMessage>(initialCapacity: 1)
    private var inflight: [UInt16: InflightMessage] = [:]
    private var inboundQoS2: Set<UInt16> = []
    /// Read decisions for this session's principal, under `lock`.
    private var readDecisions = DecisionCache()
    private var nextPacketIdentifier: UInt16 = 1
    private var nextSequence: UInt64 = 0
    private var drainScheduled = false
    private var resendInflight = false
    private var droppedMessages = 0
    /// A Will waiting out its delay; a new connection to the session cancels it.
    private var pendingWill: RoutedMessage?
    /// How many connections have attached, so that a timer set at one disconnect can tell
    /// whether the session has been resumed (and perhaps left again) since.
    private var attachments: UInt64 = 0
    private let maximumQueuedMessages: Int
    private let statistics: BrokerStatistics?

    init(
        clientID: String,
        principal: Principal,
        expiryInterval: UInt32,
        maximumQueuedMessages: Int,
        statistics: BrokerStatistics? = nil
    ) {
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
        set { lock.withLock { _expiryInterval = newValue } }
    }
    public var isConnected: Bool { lock.withLock { connection != nil } }
    public var subscriptionCount: Int { lock.withLock { subscriptionFilters.count } }
    public var queuedCount: Int { lock.withLock { queue.count } }
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
            return previous
        }
    }

    /// Detaches `oldConnection` if it is still the current one; returns whether it was.
    func detach(_ oldConnection: any SessionConnection) -> Bool {
        lock.withLock {
            guard connection === oldConnection else { return false }
            connection = nil
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

    func setPendingWill(_ will: RoutedMessage) {
        lock.withLock { pendingWill = will }
    }

    /// Takes the delayed Will, if it is still waiting (and, given `since`, only if no
    /// connection has attached since that count was read).
    func takePendingWill(since count: UInt64? = nil) -> RoutedMessage? {
        lock.withLock {
            if let count, attachments != count { return nil }
            defer { pendingWill = nil }
            return pendingWill
        }
    }

    // MARK: Subscriptions

    func recordSubscription(_ entry: SubscriptionEntry, filter: MQTTTopicFilter) -> Bool {
        lock.withLock { subscriptionFilters.updateValue(entry, forKey: filter.text) != nil }
    }

    func forgetSubscription(filter: String) -> Bool {
        lock.withLock { subscriptionFilters.removeValue(forKey: filter) != nil }
    }

    func hasSubscription(_ filter: MQTTTopicFilter) -> Bool {
        lock.withLock { subscriptionFilters[filter.text] != nil }
    }

    /// The session's filters as the client wrote them.
    var subscribedFilters: [String] { lock.withLock { Array(subscriptionFilters.keys) } }

    // MARK: Outbound

    /// Queues a delivery if `authorizer` lets this session's principal read its topic (checked
    /// under the same lock, one lock per delivery). Returns whether it was accepted, and the
    /// connection to wake if this is the first delivery since the last drain.
    func enqueue(
        _ queued: QueuedMessage,
        readPermittedBy authorizer: any Authorizer
    ) -> (accepted: Bool, wake: (any SessionConnection)?) {
        lock.withLock {
            guard readDecisions.decide(authorizer, _principal, .read, topic: queued.message.topic) == .accept else {
                return (false, nil)
            }
            return (true, enqueueLocked(queued))
        }
    }

    /// After an ACL reload: drops the queued (not yet sent) messages this session's principal
    /// may no longer read, so that none is delivered against the new rules. Returns how many.
    func dropUnreadable(by authorizer: any Authorizer) -> Int {
        lock.withLock {
            let before = queue.count
            let kept = queue.filter { authorizer.authorize(_principal, .read, topic: $0.message.topic) == .accept }
            guard kept.count != before else { return 0 }
            queue = CircularBuffer(kept)
            return before - kept.count
        }
    }

    /// Queues a delivery; returns the connection to wake if this is the first since its last
    /// drain (the caller wakes it, batched per event loop).
    private func enqueueLocked(_ queued: QueuedMessage) -> (any SessionConnection)? {
        // Offline, only QoS 1 and 2 are kept (as Mosquitto does by default).
        if connection == nil && queued.qos == .atMostOnce { return nil }
        if queue.count >= maximumQueuedMessages {
            // Full: QoS 0 goes first, the new message's or the oldest queued one's.
            if queued.qos == .atMostOnce {
                recordDrop()
                return nil
            }
            if let index = queue.firstIndex(where: { $0.qos == .atMostOnce }) {
                queue.remove(at: index)
            } else {
                recordDrop()
                return nil
            }
            recordDrop()
        }
        queue.append(queued)
        guard let connection, !drainScheduled else { return nil }
        drainScheduled = true
        return connection
    }

    /// Takes what may be sent now: in-flight messages to resend, then queued messages while
    /// the client's receive maximum allows. [MQTT-4.9.0-2]
    func takeOutgoing(now: NIODeadline) -> [OutgoingPacket] {
        lock.withLock {
            drainScheduled = false
            var outgoing: [OutgoingPacket] = []
            if resendInflight {
                resendInflight = false
                for (identifier, entry) in inflight.sorted(by: { $0.value.sequence < $1.value.sequence }) {
                    outgoing.append(
                        entry.released
                            ? .pubrel(identifier)
                            : .publish(entry.queued, packetIdentifier: identifier, duplicate: true))
                }
            }
            while let next = queue.first {
                if next.message.hasExpired(at: now) {
                    queue.removeFirst()
                    continue
                }
                if next.qos == .atMostOnce {
                    queue.removeFirst()
                    outgoing.append(.publish(next, packetIdentifier: 0, duplicate: false))
                    continue
                }
                guard inflight.count < receiveMaximum else { break }
                queue.removeFirst()
                let identifier = allocatePacketIdentifier()
                inflight[identifier] = InflightMessage(queued: next, released: false, sequence: nextSequence)
                nextSequence += 1
                outgoing.append(.publish(next, packetIdentifier: identifier, duplicate: false))
            }
            return outgoing
        }
    }

    private func recordDrop() {
        droppedMessages += 1
        if let statistics { statistics.add(statistics.messagesDropped, 1) }
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

    /// PUBACK, or PUBCOMP, or a failed PUBREC: the message leaves the window.
    func completeOutbound(_ identifier: UInt16) -> Bool {
        lock.withLock { inflight.removeValue(forKey: identifier) != nil }
    }

    /// PUBREC: the message is delivered; PUBREL follows. Returns false for an unknown id.
    func releaseOutbound(_ identifier: UInt16) -> Bool {
        lock.withLock {
            guard inflight[identifier] != nil else { return false }
            inflight[identifier]?.released = true
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
            return .new
        }
    }

    func releaseInboundQoS2(_ identifier: UInt16) -> Bool {
        lock.withLock { inboundQoS2.remove(identifier) != nil }
    }
}
