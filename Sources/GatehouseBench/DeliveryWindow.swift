import Synchronization

/// A pubsub run's end-to-end flow control, as `mqttload --window`: a publisher may have at
/// most `size` messages that not every subscriber has received yet. Without it an unpaced
/// publisher measures how fast the broker queues (and, past a session's queue limit, drops)
/// rather than how fast it delivers. It assumes every subscriber gets every message (the
/// default filter); a publisher whose window stays shut for a second starts it afresh and
/// counts a reset, so that a dropped message cannot stall it for the rest of the run.
final class DeliveryWindow: Sendable {
    /// One publisher's deliveries, and how to wake it when it waits for them.
    final class Slot: Sendable {
        let delivered = Atomic<Int>(0)
        let waiting = Atomic<Bool>(false)
        let wake = Mutex<(@Sendable () -> Void)?>(nil)
    }

    let size: Int
    let subscribers: Int
    private let slots: [Slot]

    init(size: Int, publishers: Int, subscribers: Int) {
        self.size = size
        self.subscribers = subscribers
        self.slots = (0..<publishers).map { _ in Slot() }
    }

    /// The slot of publisher `number` (numbers start at 1).
    func slot(_ number: Int) -> Slot? { slots.indices.contains(number - 1) ? slots[number - 1] : nil }

    /// A subscriber received a message of publisher `number` (from the payload's header).
    func delivered(from number: Int) {
        guard let slot = slot(number) else { return }
        // Sequentially consistent with the publisher's store of `waiting` and its load of
        // `delivered`: one of the two sides sees the other, so no wake-up is lost. A load
        // first: the read-modify-write is needed only when the publisher waits.
        slot.delivered.add(1, ordering: .sequentiallyConsistent)
        if slot.waiting.load(ordering: .sequentiallyConsistent),
            slot.waiting.exchange(false, ordering: .sequentiallyConsistent)
        {
            slot.wake.withLock { $0 }?()
        }
    }
}

/// A publisher's view of its slot: how many of its messages are still out.
struct PublisherWindow {
    let window: DeliveryWindow
    let slot: DeliveryWindow.Slot
    /// Deliveries written off by resets.
    private var forgiven = 0

    init?(window: DeliveryWindow?, number: Int) {
        guard let window, let slot = window.slot(number) else { return nil }
        self.window = window
        self.slot = slot
    }

    private func isOpen(sent: Int) -> Bool {
        sent * window.subscribers - slot.delivered.load(ordering: .sequentiallyConsistent) - forgiven
            < window.size * window.subscribers
    }

    /// Whether another message may go; if not, the slot is armed to wake the publisher (and
    /// checked again, so that a delivery between the two is not missed).
    func mayPublish(sent: Int) -> Bool {
        if isOpen(sent: sent) { return true }
        slot.waiting.store(true, ordering: .sequentiallyConsistent)
        guard isOpen(sent: sent) else { return false }
        slot.waiting.store(false, ordering: .relaxed)
        return true
    }

    /// Deliveries so far, to tell whether a shut window is moving.
    var delivered: Int { slot.delivered.load(ordering: .relaxed) }

    /// Writes off what is still out: the broker dropped it, or a subscriber does not match.
    mutating func reset(sent: Int) {
        forgiven = sent * window.subscribers - slot.delivered.load(ordering: .relaxed)
    }
}
