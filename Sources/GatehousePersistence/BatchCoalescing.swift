import GatehouseBroker

/// Drops from a batch what it would write only to delete again before the commit.
///
/// A subscriber that is online acknowledges most QoS 1 deliveries within the batch interval:
/// the delivery's insert, 'sent' update and delete then cancel out, and a message that no
/// surviving delivery holds need not be written at all. A message is left out only when its
/// routing finished in this batch (`messageRouted`), so no later batch can refer to it.
enum BatchCoalescing {
    struct DeliveryKey: Hashable {
        var clientID: String
        var sequence: UInt64
    }

    /// The changes left, and the messages kept that no delivery in the batch holds (routed
    /// partly in a later batch, or not at all), for the writer to collect if nothing does.
    static func coalesce(_ changes: [StoreChange]) -> (changes: [StoreChange], unheld: Set<StoredMessageID>) {
        var queuedHere: Set<DeliveryKey> = []
        var cancelled: Set<DeliveryKey> = []
        /// Acknowledged in this batch: a 'sent' or 'released' update before the delete is moot.
        var deletedHere: Set<DeliveryKey> = []
        var routedHere: Set<StoredMessageID> = []
        for change in changes {
            switch change {
            case .deliveryQueued(let clientID, let sequence, _, _):
                queuedHere.insert(DeliveryKey(clientID: clientID, sequence: sequence))
            case .deliveryDeleted(let clientID, let sequence):
                let key = DeliveryKey(clientID: clientID, sequence: sequence)
                deletedHere.insert(key)
                if queuedHere.contains(key) { cancelled.insert(key) }
            case .messageRouted(let id):
                routedHere.insert(id)
            default:
                break
            }
        }
        guard !deletedHere.isEmpty else { return (changes, []) }
        var held: Set<StoredMessageID> = []
        for change in changes {
            if case .deliveryQueued(let clientID, let sequence, let message, _) = change,
                !cancelled.contains(DeliveryKey(clientID: clientID, sequence: sequence))
            {
                held.insert(message)
            }
        }
        var unheld: Set<StoredMessageID> = []
        let kept = changes.filter { change in
            switch change {
            case .deliveryQueued(let clientID, let sequence, _, _), .deliveryDeleted(let clientID, let sequence):
                return !cancelled.contains(DeliveryKey(clientID: clientID, sequence: sequence))
            case .deliverySent(let clientID, let sequence, _), .deliveryReleased(let clientID, let sequence):
                return !deletedHere.contains(DeliveryKey(clientID: clientID, sequence: sequence))
            case .messageSaved(let id, _):
                if held.contains(id) { return true }
                if routedHere.contains(id) { return false }
                unheld.insert(id)
                return true
            case .messageRouted:
                return false
            default:
                return true
            }
        }
        return (kept, unheld)
    }
}
