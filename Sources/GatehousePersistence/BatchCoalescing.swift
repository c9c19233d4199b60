import GatehouseBroker

/// Drops from a batch what it would write only to delete again before the commit.
///
/// A subscriber that is online acknowledges most QoS 1 deliveries within the batch interval:
/// the delivery's insert, 'sent' update and delete then cancel out, and a message that no
/// surviving delivery holds need not be written at all. A message is left out only when its
/// routing finished in this batch (`messageRouted`), so no later batch can refer to it.
///
/// One pass, one hash lookup per delivery change: each delivery change links to the previous
/// change of the same delivery, and a delete walks that chain back. A batch holds about five
/// changes per message, tens of thousands under load, on the writer's one thread.
enum BatchCoalescing {
    struct DeliveryKey: Hashable {
        var clientID: String
        var sequence: UInt64
    }

    /// What the batch does with one message it saves.
    private struct MessageTrace {
        /// Deliveries queued in this batch that hold it and were not cancelled.
        var holders = 0
        var routed = false
    }

    /// The changes left, and the messages kept that no delivery in the batch holds (routed
    /// partly in a later batch, or not at all), for the writer to collect if nothing does.
    static func coalesce(_ changes: [StoreChange]) -> (changes: [StoreChange], unheld: Set<StoredMessageID>) {
        let none = -1
        var dropped = [Bool](repeating: false, count: changes.count)
        var droppedCount = 0
        // For a delivery change: the index of the same delivery's previous change in the batch.
        var previous = [Int](repeating: none, count: changes.count)
        // For a save or a queued delivery: its message's slot in `messages`.
        var messageSlot = [Int](repeating: none, count: changes.count)
        var lastChange: [DeliveryKey: Int] = [:]
        lastChange.reserveCapacity(changes.count / 4)
        var slots: [StoredMessageID: Int] = [:]
        slots.reserveCapacity(changes.count / 4)
        var messages: [MessageTrace] = []
        messages.reserveCapacity(changes.count / 4)

        func drop(_ index: Int) {
            if !dropped[index] {
                dropped[index] = true
                droppedCount += 1
            }
        }
        /// Links change `index` to the previous change of its delivery. A session opened again
        /// after `sessionDeleted` numbers its deliveries from 0 again: its first change for a
        /// sequence is always the queued one, where a later delete's walk stops.
        func chain(_ clientID: String, _ sequence: UInt64, at index: Int) -> Int {
            let last =
                lastChange.updateValue(index, forKey: DeliveryKey(clientID: clientID, sequence: sequence)) ?? none
            previous[index] = last
            return last
        }

        for index in changes.indices {
            switch changes[index] {
            case .messageSaved(let id, _):
                if let slot = slots[id] {
                    messageSlot[index] = slot
                } else {
                    slots[id] = messages.count
                    messageSlot[index] = messages.count
                    messages.append(MessageTrace())
                }
            case .deliveryQueued(let clientID, let sequence, let message, _):
                _ = chain(clientID, sequence, at: index)
                if let slot = slots[message] {
                    messageSlot[index] = slot
                    messages[slot].holders += 1
                }
            case .deliverySent(let clientID, let sequence, _), .deliveryReleased(let clientID, let sequence):
                _ = chain(clientID, sequence, at: index)
            case .deliveryDeleted(let clientID, let sequence):
                // A 'sent' or 'released' update before the delete is moot; a queued one
                // cancels out with the delete.
                var earlier = chain(clientID, sequence, at: index)
                previous[index] = none  // what follows a delete starts a new chain
                while earlier != none {
                    if case .deliveryDeleted = changes[earlier] { break }
                    drop(earlier)
                    if case .deliveryQueued = changes[earlier] {
                        drop(index)
                        if messageSlot[earlier] != none { messages[messageSlot[earlier]].holders -= 1 }
                        break
                    }
                    earlier = previous[earlier]
                }
            case .messageRouted(let id):
                drop(index)
                if let slot = slots[id] { messages[slot].routed = true }
            default:
                break
            }
        }

        var unheld: Set<StoredMessageID> = []
        var kept: [StoreChange] = []
        kept.reserveCapacity(changes.count - droppedCount)
        for index in changes.indices where !dropped[index] {
            if case .messageSaved(let id, _) = changes[index] {
                let trace = messages[messageSlot[index]]
                if trace.holders == 0 {
                    if trace.routed { continue }
                    unheld.insert(id)
                }
            }
            kept.append(changes[index])
        }
        return (kept, unheld)
    }
}
