public import MQTTCore

/// One client's subscription to one filter, as the router sees it.
public struct SubscriptionEntry: Sendable, Hashable {
    public var clientID: String
    public var options: MQTTPacket.SubscriptionOptions
    /// The 5.0 Subscription Identifier given with the SUBSCRIBE, if any.
    public var identifier: UInt32?

    public init(clientID: String, options: MQTTPacket.SubscriptionOptions, identifier: UInt32? = nil) {
        self.clientID = clientID
        self.options = options
        self.identifier = identifier
    }
}

/// A node of the persistent trie: never mutated once built, so a snapshot can be read from
/// any thread while writers build the next one by copying the path they change.
final class TrieNode: Sendable {
    let children: [String: TrieNode]
    /// Subscriptions whose filter ends at this node, by client id.
    let subscribers: [String: SubscriptionEntry]

    static let empty = TrieNode(children: [:], subscribers: [:])

    init(children: [String: TrieNode], subscribers: [String: SubscriptionEntry]) {
        self.children = children
        self.subscribers = subscribers
    }

    var isEmpty: Bool { children.isEmpty && subscribers.isEmpty }

    func updating(
        levels: ArraySlice<Substring>,
        _ change: (inout [String: SubscriptionEntry]) -> Void
    ) -> TrieNode {
        guard let level = levels.first else {
            var subscribers = self.subscribers
            change(&subscribers)
            return TrieNode(children: children, subscribers: subscribers)
        }
        let key = String(level)
        let child = (children[key] ?? .empty).updating(levels: levels.dropFirst(), change)
        var children = self.children
        children[key] = child.isEmpty ? nil : child
        return TrieNode(children: children, subscribers: subscribers)
    }
}

/// What one PUBLISH delivers to one client: overlapping subscriptions give one message at
/// the highest QoS with every subscription identifier. [MQTT-3.3.5-1], [MQTT-3.3.4-3]
public struct Delivery: Sendable, Hashable {
    public var qos: MQTTQoS
    public var retainAsPublished: Bool
    public var subscriptionIdentifiers: [UInt32]
}

/// The subscription index: a topic trie whose match cost follows the topic's depth and the
/// matching subscriptions, never the number of subscriptions.
public struct SubscriptionTrie: Sendable {
    private(set) var root: TrieNode = .empty
    public private(set) var count = 0

    public init() {}

    /// Adds or replaces the client's subscription to `filter` (an ordinary, validated filter).
    /// Returns whether one existed before.
    @discardableResult
    public mutating func insert(_ entry: SubscriptionEntry, filter: String) -> Bool {
        var existed = false
        root = root.updating(levels: Self.levels(filter)[...]) { subscribers in
            existed = subscribers.updateValue(entry, forKey: entry.clientID) != nil
        }
        if !existed { count += 1 }
        return existed
    }

    /// Removes the client's subscription to `filter`; returns whether there was one.
    @discardableResult
    public mutating func remove(clientID: String, filter: String) -> Bool {
        var removed = false
        root = root.updating(levels: Self.levels(filter)[...]) { subscribers in
            removed = subscribers.removeValue(forKey: clientID) != nil
        }
        if removed { count -= 1 }
        return removed
    }

    /// Every client a PUBLISH on `topic` reaches, merged per client. A subscription with No
    /// Local does not see its own client's messages. [MQTT-3.8.3-3]
    public func match(topic: String, publisherClientID: String?) -> [String: Delivery] {
        var result: [String: Delivery] = [:]
        let levels = Self.levels(topic)
        // Wildcards at the first level never match a $-topic. [MQTT-4.7.2-1]
        let isDollarTopic = topic.utf8.first == UInt8(ascii: "$")
        collect(
            root, levels: levels, index: 0, isDollarTopic: isDollarTopic, publisher: publisherClientID, into: &result)
        return result
    }

    private func collect(
        _ node: TrieNode,
        levels: [Substring],
        index: Int,
        isDollarTopic: Bool,
        publisher: String?,
        into result: inout [String: Delivery]
    ) {
        let wildcardsAllowed = !(index == 0 && isDollarTopic)
        if wildcardsAllowed, let hash = node.children["#"] {
            // `#` matches this level and everything below, including the parent itself.
            add(hash.subscribers, publisher: publisher, into: &result)
        }
        guard index < levels.count else {
            add(node.subscribers, publisher: publisher, into: &result)
            return
        }
        if wildcardsAllowed, let plus = node.children["+"] {
            collect(
                plus, levels: levels, index: index + 1, isDollarTopic: isDollarTopic, publisher: publisher,
                into: &result)
        }
        if let child = node.children[String(levels[index])] {
            collect(
                child, levels: levels, index: index + 1, isDollarTopic: isDollarTopic, publisher: publisher,
                into: &result)
        }
    }

    private func add(
        _ subscribers: [String: SubscriptionEntry], publisher: String?, into result: inout [String: Delivery]
    ) {
        for (clientID, entry) in subscribers {
            if entry.options.noLocal && clientID == publisher { continue }
            let identifiers = entry.identifier.map { [$0] } ?? []
            if var existing = result[clientID] {
                existing.qos = max(existing.qos, entry.options.qos)
                existing.retainAsPublished = existing.retainAsPublished || entry.options.retainAsPublished
                existing.subscriptionIdentifiers += identifiers
                result[clientID] = existing
            } else {
                result[clientID] = Delivery(
                    qos: entry.options.qos,
                    retainAsPublished: entry.options.retainAsPublished,
                    subscriptionIdentifiers: identifiers
                )
            }
        }
    }

    static func levels(_ topic: String) -> [Substring] {
        topic.split(separator: "/", omittingEmptySubsequences: false)
    }
}
