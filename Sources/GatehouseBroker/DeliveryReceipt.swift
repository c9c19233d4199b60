import Atomics

/// The stored deliveries of one QoS 1 message that their subscribers have not acknowledged yet.
///
/// A PUBACK promises that the message reaches every persistent session that matched it, so it
/// normally waits for the store's commit. Once each of those sessions' clients has acknowledged
/// its copy, that promise is kept already: the publisher's PUBACK may go before the commit.
/// Subscribers online and quick make the common case, where a commit is the slowest step.
final class DeliveryReceipt: Sendable {
    /// Starts at 1 for the routing itself, so the count cannot reach zero while deliveries
    /// are still being added.
    private let outstanding = ManagedAtomic(1)
    /// A copy went to a session whose client is away: only the commit can release the PUBACK.
    private let heldOffline = ManagedAtomic(false)
    /// The publisher's connection, holding the acknowledgement; weak, as a copy queued for an
    /// offline session may outlive it by days.
    weak let publisher: (any SessionConnection)?

    init(publisher: any SessionConnection) {
        self.publisher = publisher
    }

    /// A stored delivery now carries the message.
    func expectAcknowledgement() {
        outstanding.wrappingIncrement(ordering: .relaxed)
    }

    /// A stored copy waits for a client that is not connected: no acknowledgement is coming soon.
    func storedOffline() {
        outstanding.wrappingIncrement(ordering: .relaxed)
        heldOffline.store(true, ordering: .relaxed)
    }

    /// Whether subscribers' acknowledgements can fulfil it: every stored copy went to a connected client.
    var mayBeFulfilled: Bool { !heldOffline.load(ordering: .relaxed) }

    /// A subscriber acknowledged its copy. Returns the publisher's connection when this was the
    /// last copy outstanding after routing, for the caller to tell on its event loop.
    func acknowledged() -> (any SessionConnection)? {
        outstanding.wrappingDecrementThenLoad(ordering: .acquiringAndReleasing) == 0 ? publisher : nil
    }

    /// Routing is over. True when no stored copy is left unacknowledged (or none was stored).
    func routingFinished() -> Bool {
        outstanding.wrappingDecrementThenLoad(ordering: .acquiringAndReleasing) == 0
    }

    var isFulfilled: Bool { outstanding.load(ordering: .acquiring) == 0 }
}

/// The receipt of the message being routed, made only when a first stored copy needs it: most
/// QoS 1 messages reach no persistent session and should cost no allocation.
struct PendingReceipt {
    private let publisher: (any SessionConnection)?
    private(set) var receipt: DeliveryReceipt?

    /// Without a publisher, no receipt: the PUBACK waits for the commit.
    init(publisher: (any SessionConnection)? = nil) {
        self.publisher = publisher
    }

    mutating func forStoredCopy() -> DeliveryReceipt? {
        if receipt == nil, let publisher { receipt = DeliveryReceipt(publisher: publisher) }
        return receipt
    }
}
