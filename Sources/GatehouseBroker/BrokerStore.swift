public import GatehouseAuth
public import MQTTCore
public import NIOCore

/// The seam between the broker and a durable store of its state.
///
/// Memory stays the routing truth: the broker appends each change as it makes it, in the
/// order it makes it for one session (appends happen under that session's lock), and the
/// store applies them in that order on its own thread. An acknowledgement that promises
/// durability (PUBACK, PUBREC, SUBACK) waits until `whenDurable` says its changes are
/// committed. Implementations never block the caller for longer than an append.
public protocol BrokerStore: AnyObject, Sendable {
    /// Hands one change to the store.
    func append(_ change: StoreChange)
    /// Hands several changes to the store at once, in order.
    func append(contentsOf changes: [StoreChange])
    /// A ticket covering every change appended before this call.
    func currentTicket() -> UInt64
    /// Runs `body` on `eventLoop` once every change covered by `ticket` is committed. Not
    /// `urgent`: what waits will most likely be released otherwise first (`DeliveryReceipt`),
    /// so the commit may take longer and serve more.
    func whenDurable(
        _ ticket: UInt64, on eventLoop: any EventLoop, urgent: Bool, _ body: @escaping @Sendable () -> Void)
    /// Reads the deliveries a session held at start-up (its `backlog`), in delivery order, off
    /// the caller's thread, and hands them to `body` on `eventLoop`.
    func loadBacklog(
        of clientID: String, _ backlog: StoredBacklog, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (Result<[RestoredBrokerState.Delivery], any Error>) -> Void)
    /// Whether the store keeps up with what it is given. A PUBACK goes before the commit only
    /// then (`DeliveryReceipt`), so that publishers never outrun the writer.
    var isKeepingUp: Bool { get }
}

extension BrokerStore {
    public var isKeepingUp: Bool { true }

    public func append(contentsOf changes: [StoreChange]) {
        for change in changes { append(change) }
    }

    public func whenDurable(_ ticket: UInt64, on eventLoop: any EventLoop, _ body: @escaping @Sendable () -> Void) {
        whenDurable(ticket, on: eventLoop, urgent: true, body)
    }
}

/// The deliveries a restored session holds in the store and not yet in memory: start-up
/// reads only their count, and the session reads them when its client returns.
public struct StoredBacklog: Sendable, Equatable {
    public var count: Int
    /// What they count against the stored-bytes limit until they are read (from their stored
    /// size; the exact figure replaces it then).
    public var bytes: Int
    public var lastSequence: UInt64

    public init(count: Int, bytes: Int, lastSequence: UInt64) {
        self.count = count
        self.bytes = bytes
        self.lastSequence = lastSequence
    }

    /// What a stored delivery counts beyond its topic and payload: its rows.
    public static let overheadPerDelivery = 96
}

/// One change of the broker's durable state. Clean sessions (expiry 0) never make any.
public enum StoreChange: Sendable {
    /// A persistent session was opened or resumed (attached now): insert or replace.
    case sessionOpened(clientID: String, principal: Principal, expiryInterval: UInt32)
    /// Its connection ended at `at` (seconds since 1970); it expires `expiryInterval` later.
    case sessionDetached(clientID: String, at: Int64, expiryInterval: UInt32)
    /// The session ended: everything it holds goes with it.
    case sessionDeleted(clientID: String)
    case subscriptionSaved(
        clientID: String, filter: String, options: MQTTPacket.SubscriptionOptions, identifier: UInt32?)
    case subscriptionDeleted(clientID: String, filter: String)
    /// A message some persistent session holds, stored once however many do.
    case messageSaved(StoredMessageID, RoutedMessage)
    /// Routing of the message is done: every delivery that refers to it has been appended.
    case messageRouted(StoredMessageID)
    /// A message queued for a session, as its `sequence`-th delivery.
    case deliveryQueued(clientID: String, sequence: UInt64, message: StoredMessageID, delivery: StoredDelivery)
    /// Sent with `packetIdentifier`, not yet acknowledged.
    case deliverySent(clientID: String, sequence: UInt64, packetIdentifier: UInt16)
    /// QoS 2: PUBREC came; only PUBREL/PUBCOMP remain.
    case deliveryReleased(clientID: String, sequence: UInt64)
    /// Acknowledged, expired or dropped.
    case deliveryDeleted(clientID: String, sequence: UInt64)
    /// An inbound QoS 2 PUBLISH acknowledged with PUBREC and waiting for PUBREL.
    case inboundQoS2Received(clientID: String, packetIdentifier: UInt16)
    case inboundQoS2Released(clientID: String, packetIdentifier: UInt16)
    case retainedSet(RoutedMessage)
    case retainedCleared(topic: String)
    /// A Will waiting out its delay, due at `dueAt` (seconds since 1970).
    case willScheduled(clientID: String, message: WillMessage, dueAt: Int64)
    case willCancelled(clientID: String)
    /// The Will of a connected persistent session: due `delay` seconds after its connection
    /// ends, which a crash of the broker also does.
    case willArmed(clientID: String, message: WillMessage, delay: UInt32)
    case willDisarmed(clientID: String)
}

/// The store's name for a message, given by the broker when a persistent session first takes it.
public typealias StoredMessageID = UInt64

/// How one session receives a stored message.
public struct StoredDelivery: Sendable, Equatable {
    public var qos: MQTTQoS
    public var retain: Bool
    public var subscriptionIdentifiers: [UInt32]

    public init(qos: MQTTQoS, retain: Bool, subscriptionIdentifiers: [UInt32]) {
        self.qos = qos
        self.retain = retain
        self.subscriptionIdentifiers = subscriptionIdentifiers
    }
}

/// What a store hands back at start-up: expired sessions and messages already purged.
public struct RestoredBrokerState: Sendable {
    public struct Session: Sendable {
        public var clientID: String
        public var principal: Principal
        public var expiryInterval: UInt32
        /// When its connection ended (seconds since 1970); for a session whose connection the
        /// process lost, when the store last changed.
        public var detachedAt: Int64
        public var subscriptions: [Subscription]
        /// Its queued and in-flight deliveries, left in the store.
        public var backlog: StoredBacklog?
        public var inboundQoS2: [UInt16]
        public var will: (message: WillMessage, dueAt: Int64)?
        /// The Will of a connection the previous process lost.
        public var armedWill: (message: WillMessage, delay: UInt32)?

        public init(
            clientID: String, principal: Principal, expiryInterval: UInt32, detachedAt: Int64,
            subscriptions: [Subscription] = [], backlog: StoredBacklog? = nil, inboundQoS2: [UInt16] = [],
            will: (message: WillMessage, dueAt: Int64)? = nil
        ) {
            self.clientID = clientID
            self.principal = principal
            self.expiryInterval = expiryInterval
            self.detachedAt = detachedAt
            self.subscriptions = subscriptions
            self.backlog = backlog
            self.inboundQoS2 = inboundQoS2
            self.will = will
        }
    }

    public struct Subscription: Sendable {
        public var filter: String
        public var options: MQTTPacket.SubscriptionOptions
        public var identifier: UInt32?

        public init(filter: String, options: MQTTPacket.SubscriptionOptions, identifier: UInt32?) {
            self.filter = filter
            self.options = options
            self.identifier = identifier
        }
    }

    public struct Delivery: Sendable {
        public enum State: Int, Sendable {
            case queued = 0
            case sent = 1
            case released = 2
        }
        public var sequence: UInt64
        public var messageID: StoredMessageID
        public var message: RoutedMessage
        public var delivery: StoredDelivery
        public var state: State
        public var packetIdentifier: UInt16

        public init(
            sequence: UInt64, messageID: StoredMessageID, message: RoutedMessage, delivery: StoredDelivery,
            state: State, packetIdentifier: UInt16
        ) {
            self.sequence = sequence
            self.messageID = messageID
            self.message = message
            self.delivery = delivery
            self.state = state
            self.packetIdentifier = packetIdentifier
        }
    }

    public var sessions: [Session]
    public var retained: [RoutedMessage]
    /// The next free message id.
    public var nextMessageID: StoredMessageID

    public init(sessions: [Session] = [], retained: [RoutedMessage] = [], nextMessageID: StoredMessageID = 1) {
        self.sessions = sessions
        self.retained = retained
        self.nextMessageID = nextMessageID
    }
}
