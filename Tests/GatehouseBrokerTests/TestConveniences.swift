import GatehouseAuth
import MQTTCore

@testable import GatehouseBroker

/// Shorthands that only tests need: plain-string filters and unconditional enqueueing.
extension SubscriptionTrie {
    @discardableResult
    mutating func insert(_ entry: SubscriptionEntry, filter: String) -> Bool {
        insert(entry, filter: MQTTTopicFilter(uncheckedFilter: filter))
    }

    @discardableResult
    mutating func remove(clientID: String, filter: String) -> Bool {
        remove(clientID: clientID, filter: MQTTTopicFilter(uncheckedFilter: filter))
    }

    func match(topic: String, publisherClientID: String?) -> [String: Delivery] {
        matchAll(topic: topic, publisherClientID: publisherClientID).byClient
    }
}

extension Session {
    func enqueue(_ queued: QueuedMessage, readPermittedBy authorizer: any Authorizer) -> Enqueued {
        var message = queued.message
        var noReceipt = PendingReceipt()
        return enqueue(
            &message, queued.storedDelivery, topic: TopicLevels(message.topic), readPermittedBy: authorizer,
            receipt: &noReceipt)
    }

    /// Enqueues with every read allowed; returns the connection to wake, if any.
    func enqueue(_ queued: QueuedMessage) -> (any SessionConnection)? {
        enqueue(queued, readPermittedBy: AllowAllAuthorizer()).wake
    }
}

extension Session {
    /// Completes an outbound message, ignoring the publishers it would release.
    func completeOutbound(_ identifier: UInt16) -> Bool {
        var batch = DeliveryBatch()
        return completeOutbound(identifier, into: &batch)
    }
}
