import Atomics
import MQTTCore
public import NIOCore

/// Why a message was not delivered, in `gatehouse_messages_dropped_total{reason}` (EMQX's
/// `messages.dropped.*` and `delivery.dropped.*`).
public enum DropReason: Int, CaseIterable, Sendable {
    /// A session's queue (or the store's byte limit) was full.
    case queueFull
    /// Its message expiry interval passed while it waited.
    case expired
    /// No subscription matched the PUBLISH.
    case noSubscribers
    /// The ACL refused the PUBLISH, or a reloaded ACL no longer lets a queued message be read.
    case aclRefused
    /// The broker's memory budget for queued messages was spent.
    case memoryBudget

    /// The metric's `reason` label.
    public var label: String {
        switch self {
        case .queueFull: "queue_full"
        case .expired: "expired"
        case .noSubscribers: "no_subscribers"
        case .aclRefused: "acl_refused"
        case .memoryBudget: "memory_budget"
        }
    }
}

/// Broker-wide counters for `$SYS/broker/…`. Connections add their counts once per read
/// cycle, not per message, so the shared atomics stay off the per-message path.
public final class BrokerStatistics: Sendable {
    public let startedAt = NIODeadline.now()
    let clientsConnected = ManagedAtomic<Int>(0)
    /// Of those, the 5.0 ones (the rest speak 3.1.1).
    let clientsConnectedV5 = ManagedAtomic<Int>(0)
    let messagesReceived = ManagedAtomic<Int>(0)
    let messagesSent = ManagedAtomic<Int>(0)
    /// One counter per `DropReason`, indexed by its raw value (a drop on the publish path
    /// costs one atomic add, no lookup).
    private let dropped = DropReason.allCases.map { _ in ManagedAtomic<Int>(0) }
    let bytesReceived = ManagedAtomic<Int>(0)
    let bytesSent = ManagedAtomic<Int>(0)
    let authorizationRejections = ManagedAtomic<Int>(0)
    let aclReloadFailures = ManagedAtomic<Int>(0)
    let refusedOverConnectionLimit = ManagedAtomic<Int>(0)
    let refusedOverIdentityLimit = ManagedAtomic<Int>(0)
    let refusedOverListenerLimit = ManagedAtomic<Int>(0)
    let disconnectedOverPublishRate = ManagedAtomic<Int>(0)
    /// What every session's queued and in-flight messages hold (`QueuedMessage.storedSize`).
    let queuedBytes = ManagedAtomic<Int>(0)
    let refusedOverMemoryBudget = ManagedAtomic<Int>(0)

    public init() {}

    var heldBytes: Int { queuedBytes.load(ordering: .relaxed) }

    public struct Snapshot: Sendable, Equatable {
        public var clientsConnected: Int
        public var clientsConnectedV5: Int
        public var messagesReceived: Int
        public var messagesSent: Int
        public var droppedByReason: [DropReason: Int]
        /// Every drop, whatever its reason.
        public var messagesDropped: Int { droppedByReason.values.reduce(0, +) }
        public var bytesReceived: Int
        public var bytesSent: Int
        /// PUBLISH, SUBSCRIBE and Will topics the ACL refused, and subscriptions a reload removed.
        public var authorizationRejections: Int
        /// ACL reloads refused because the file had errors.
        public var aclReloadFailures: Int
        /// CONNECTs refused by `maximumConnections` and by `maximumConnectionsPerIdentity`.
        public var refusedOverConnectionLimit: Int
        public var refusedOverIdentityLimit: Int
        /// CONNECTs refused by a listener's own `max_connections`.
        public var refusedOverListenerLimit: Int
        /// Connections ended for publishing faster than `maximumPublishRate` or `maximumPublishBytesRate`.
        public var disconnectedOverPublishRate: Int
        public var queuedBytes: Int
        /// PUBLISH packets refused (QoS 1/2) or dropped (QoS 0) while `queuedBytes` was past the budget.
        public var refusedOverMemoryBudget: Int
    }

    public var snapshot: Snapshot {
        Snapshot(
            clientsConnected: clientsConnected.load(ordering: .relaxed),
            clientsConnectedV5: clientsConnectedV5.load(ordering: .relaxed),
            messagesReceived: messagesReceived.load(ordering: .relaxed),
            messagesSent: messagesSent.load(ordering: .relaxed),
            droppedByReason: Dictionary(
                uniqueKeysWithValues: zip(DropReason.allCases, dropped.map { $0.load(ordering: .relaxed) })),
            bytesReceived: bytesReceived.load(ordering: .relaxed),
            bytesSent: bytesSent.load(ordering: .relaxed),
            authorizationRejections: authorizationRejections.load(ordering: .relaxed),
            aclReloadFailures: aclReloadFailures.load(ordering: .relaxed),
            refusedOverConnectionLimit: refusedOverConnectionLimit.load(ordering: .relaxed),
            refusedOverIdentityLimit: refusedOverIdentityLimit.load(ordering: .relaxed),
            refusedOverListenerLimit: refusedOverListenerLimit.load(ordering: .relaxed),
            disconnectedOverPublishRate: disconnectedOverPublishRate.load(ordering: .relaxed),
            queuedBytes: queuedBytes.load(ordering: .relaxed),
            refusedOverMemoryBudget: refusedOverMemoryBudget.load(ordering: .relaxed)
        )
    }

    /// An ACL reload the file's errors refused.
    public func countACLReloadFailure() { add(aclReloadFailures, 1) }

    func countDrop(_ reason: DropReason, _ amount: Int = 1) {
        add(dropped[reason.rawValue], amount)
    }

    func add(_ counter: ManagedAtomic<Int>, _ amount: Int) {
        if amount != 0 { counter.wrappingIncrement(by: amount, ordering: .relaxed) }
    }
}

/// Counts a connection's traffic in plain integers and hands it to the shared counters in
/// one go.
struct TrafficTally {
    var messagesReceived = 0
    var messagesSent = 0
    var bytesReceived = 0
    var bytesSent = 0

    mutating func flush(into statistics: BrokerStatistics) {
        statistics.add(statistics.messagesReceived, messagesReceived)
        statistics.add(statistics.messagesSent, messagesSent)
        statistics.add(statistics.bytesReceived, bytesReceived)
        statistics.add(statistics.bytesSent, bytesSent)
        self = TrafficTally()
    }
}
