import Atomics
public import GatehouseAuth
public import MQTTCore

/// One client's subscription to one filter, as the router sees it.
public struct SubscriptionEntry: Sendable, Hashable {
    public var clientID: String
    public var options: MQTTPacket.SubscriptionOptions
    /// The 5.0 Subscription Identifier given with the SUBSCRIBE, if any.
    public var identifier: UInt32?
    /// The subscriber's session, so that routing needs no registry lookup (and no lock).
    /// A session's entries leave the trie when the session ends.
    public var session: Session?

    public init(
        clientID: String,
        options: MQTTPacket.SubscriptionOptions,
        identifier: UInt32? = nil,
        session: Session? = nil
    ) {
        self.clientID = clientID
        self.options = options
        self.identifier = identifier
        self.session = session
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.clientID == rhs.clientID && lhs.options == rhs.options && lhs.identifier == rhs.identifier
            && lhs.session === rhs.session
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(clientID)
        hasher.combine(options)
        hasher.combine(identifier)
    }
}

/// A node of the persistent trie: never mutated once built, so a snapshot can be read from
/// any thread while writers build the next one by copying the path they change.
final class TrieNode: Sendable {
    let children: [String: TrieNode]
    /// `children["+"]` and `children["#"]`, looked up once when the node is made rather than
    /// hashed on every level of every PUBLISH.
    let plusChild: TrieNode?
    let hashChild: TrieNode?
    /// Subscriptions whose filter ends at this node, by client id.
    let subscribers: [String: SubscriptionEntry]
    /// Shared subscriptions ending at this node, by share name.
    let sharedGroups: [String: SharedGroup]

    static let empty = TrieNode(children: [:], subscribers: [:], sharedGroups: [:])

    init(children: [String: TrieNode], subscribers: [String: SubscriptionEntry], sharedGroups: [String: SharedGroup]) {
        self.children = children
        self.plusChild = children["+"]
        self.hashChild = children["#"]
        self.subscribers = subscribers
        self.sharedGroups = sharedGroups
    }

    var isEmpty: Bool { children.isEmpty && subscribers.isEmpty && sharedGroups.isEmpty }

    /// A copy with the node at `levels` changed by `change`; the path to it is copied, the
    /// rest shared.
    func updating(levels: ArraySlice<Substring>, _ change: (TrieNode) -> TrieNode) -> TrieNode {
        guard let level = levels.first else { return change(self) }
        let key = String(level)
        let child = (children[key] ?? .empty).updating(levels: levels.dropFirst(), change)
        var children = self.children
        children[key] = child.isEmpty ? nil : child
        return TrieNode(children: children, subscribers: subscribers, sharedGroups: sharedGroups)
    }

    func with(subscribers: [String: SubscriptionEntry]) -> TrieNode {
        TrieNode(children: children, subscribers: subscribers, sharedGroups: sharedGroups)
    }

    func with(sharedGroups: [String: SharedGroup]) -> TrieNode {
        TrieNode(children: children, subscribers: subscribers, sharedGroups: sharedGroups)
    }
}

/// A trie node being built in place, for bulk inserts.
private final class TrieBuilder {
    var children: [String: TrieBuilder] = [:]
    var subscribers: [String: SubscriptionEntry]
    var sharedGroups: [String: SharedGroup]

    init(_ node: TrieNode) {
        subscribers = node.subscribers
        sharedGroups = node.sharedGroups
        for (key, child) in node.children { children[key] = TrieBuilder(child) }
    }

    func child(_ key: String) -> TrieBuilder {
        if let existing = children[key] { return existing }
        let fresh = TrieBuilder(.empty)
        children[key] = fresh
        return fresh
    }

    func frozen() -> TrieNode {
        TrieNode(
            children: children.compactMapValues { child in
                let node = child.frozen()
                return node.isEmpty ? nil : node
            }, subscribers: subscribers, sharedGroups: sharedGroups)
    }
}

/// The members of one shared subscription (`$share/{name}/{filter}`) and the round-robin
/// position, which survives membership changes because the counter object is carried over.
public final class SharedGroup: Sendable {
    public let members: [SubscriptionEntry]
    let nextIndex: ManagedAtomic<Int>

    init(members: [SubscriptionEntry], nextIndex: ManagedAtomic<Int>) {
        self.members = members
        self.nextIndex = nextIndex
    }

    /// Members in the order to try for the next message: round robin.
    public func rotation() -> some Sequence<SubscriptionEntry> {
        let start = nextIndex.loadThenWrappingIncrement(ordering: .relaxed)
        let count = members.count
        return (0..<count).lazy.map { self.members[(start &+ $0) % count] }
    }
}

/// What one PUBLISH delivers to one client: overlapping subscriptions give one message at
/// the highest QoS with every subscription identifier. [MQTT-3.3.5-1], [MQTT-3.3.4-3]
public struct Delivery: Sendable {
    public var clientID: String
    public var qos: MQTTQoS
    public var retainAsPublished: Bool
    public var subscriptionIdentifiers: [UInt32]
    public var session: Session?

    init(_ entry: SubscriptionEntry) {
        clientID = entry.clientID
        qos = entry.options.qos
        retainAsPublished = entry.options.retainAsPublished
        subscriptionIdentifiers = entry.identifier.map { [$0] } ?? []
        session = entry.session
    }

    /// Another of the client's subscriptions matched too: the highest QoS, every identifier.
    mutating func merge(_ entry: SubscriptionEntry) {
        qos = max(qos, entry.options.qos)
        retainAsPublished = retainAsPublished || entry.options.retainAsPublished
        if let identifier = entry.identifier { subscriptionIdentifiers.append(identifier) }
    }
}

/// The subscription index: a topic trie whose match cost follows the topic's depth and the
/// matching subscriptions, never the number of subscriptions.
public struct SubscriptionTrie: Sendable {
    private(set) var root: TrieNode = .empty
    public private(set) var count = 0

    public init() {}

    /// Adds or replaces the client's subscription to `filter`; a shared one joins the group.
    /// Returns whether one existed before.
    @discardableResult
    public mutating func insert(_ entry: SubscriptionEntry, filter: MQTTTopicFilter) -> Bool {
        var existed = false
        root = root.updating(levels: Self.levels(filter.filter)[...]) { node in
            guard let group = filter.shareGroup else {
                var subscribers = node.subscribers
                existed = subscribers.updateValue(entry, forKey: entry.clientID) != nil
                return node.with(subscribers: subscribers)
            }
            var groups = node.sharedGroups
            let current = groups[group]
            var members = current?.members ?? []
            if let index = members.firstIndex(where: { $0.clientID == entry.clientID }) {
                existed = true
                members[index] = entry
            } else {
                members.append(entry)
            }
            groups[group] = SharedGroup(members: members, nextIndex: current?.nextIndex ?? ManagedAtomic(0))
            return node.with(sharedGroups: groups)
        }
        if !existed { count += 1 }
        return existed
    }

    /// Adds many subscriptions at once, as at start-up: one insert copies the path it changes,
    /// which for a level with many children (`fleet/{device}/…`) is quadratic over many inserts,
    /// so the trie is rebuilt once in a mutable form instead.
    public mutating func insert(contentsOf entries: [(SubscriptionEntry, MQTTTopicFilter)]) {
        let builder = TrieBuilder(root)
        for (entry, filter) in entries {
            var node = builder
            for level in Self.levels(filter.filter) { node = node.child(String(level)) }
            if let group = filter.shareGroup {
                var members = node.sharedGroups[group]?.members ?? []
                if let index = members.firstIndex(where: { $0.clientID == entry.clientID }) {
                    members[index] = entry
                } else {
                    members.append(entry)
                    count += 1
                }
                node.sharedGroups[group] = SharedGroup(
                    members: members, nextIndex: node.sharedGroups[group]?.nextIndex ?? ManagedAtomic(0))
            } else if node.subscribers.updateValue(entry, forKey: entry.clientID) == nil {
                count += 1
            }
        }
        root = builder.frozen()
    }

    /// Removes the client's subscription to `filter`; returns whether there was one.
    @discardableResult
    public mutating func remove(clientID: String, filter: MQTTTopicFilter) -> Bool {
        var removed = false
        root = root.updating(levels: Self.levels(filter.filter)[...]) { node in
            guard let group = filter.shareGroup else {
                var subscribers = node.subscribers
                removed = subscribers.removeValue(forKey: clientID) != nil
                return node.with(subscribers: subscribers)
            }
            var groups = node.sharedGroups
            guard let current = groups[group] else { return node }
            let members = current.members.filter { $0.clientID != clientID }
            removed = members.count != current.members.count
            groups[group] = members.isEmpty ? nil : SharedGroup(members: members, nextIndex: current.nextIndex)
            return node.with(sharedGroups: groups)
        }
        if removed { count -= 1 }
        return removed
    }

    /// Every client a PUBLISH on `topic` reaches through ordinary subscriptions, merged per
    /// client (No Local hides a client's own messages [MQTT-3.8.3-3]), plus the shared groups
    /// it matches; each group delivers one copy, apart from any ordinary one. [MQTT-4.8.2]
    public func matchAll(topic: TopicLevels, publisherClientID: String?) -> Match {
        var result = Match()
        // Wildcards at the first level never match a $-topic. [MQTT-4.7.2-1]
        collect(
            root, levels: topic.levels, index: 0, isDollarTopic: topic.isDollarTopic, publisher: publisherClientID,
            into: &result)
        return result
    }

    public func matchAll(topic: String, publisherClientID: String?) -> Match {
        matchAll(topic: TopicLevels(topic), publisherClientID: publisherClientID)
    }

    public struct Match: Sendable {
        /// One per client, in the order first matched. An array, not a dictionary: most messages
        /// reach few clients, and a client matched by two of its filters is rare. Only a lookup
        /// (a second node adding clients) builds the index by client id, and only past
        /// `indexedFrom` clients: a fan-out from one node hashes nothing.
        public private(set) var deliveries: [Delivery] = []
        private var positions: [String: Int]?
        public var sharedGroups: [SharedGroup] = []
        public var isEmpty: Bool { deliveries.isEmpty && sharedGroups.isEmpty }
        static var indexedFrom: Int { 16 }

        /// The deliveries by client id.
        public var byClient: [String: Delivery] {
            Dictionary(uniqueKeysWithValues: deliveries.map { ($0.clientID, $0) })
        }

        /// Adds `entry`'s delivery, or merges it into the client's; `mayRepeat` false when the
        /// caller knows the client is not here yet.
        mutating func add(_ entry: SubscriptionEntry, mayRepeat: Bool) {
            if mayRepeat, let position = position(of: entry.clientID) {
                deliveries[position].merge(entry)
                return
            }
            deliveries.append(Delivery(entry))
            positions?[entry.clientID] = deliveries.count - 1
        }

        private mutating func position(of clientID: String) -> Int? {
            guard deliveries.count >= Self.indexedFrom else { return deliveries.firstIndex { $0.clientID == clientID } }
            if positions == nil {
                positions = Dictionary(
                    uniqueKeysWithValues: deliveries.enumerated().map { ($0.element.clientID, $0.offset) })
            }
            return positions?[clientID]
        }
    }

    private func collect(
        _ node: TrieNode,
        levels: [Substring],
        index: Int,
        isDollarTopic: Bool,
        publisher: String?,
        into result: inout Match
    ) {
        let wildcardsAllowed = !(index == 0 && isDollarTopic)
        if wildcardsAllowed, let hash = node.hashChild {
            // `#` matches this level and everything below, including the parent itself.
            add(hash, publisher: publisher, into: &result)
        }
        guard index < levels.count else {
            add(node, publisher: publisher, into: &result)
            return
        }
        if wildcardsAllowed, let plus = node.plusChild {
            collect(
                plus, levels: levels, index: index + 1, isDollarTopic: isDollarTopic, publisher: publisher,
                into: &result)
        }
        if !node.children.isEmpty, let child = node.children[String(levels[index])] {
            collect(
                child, levels: levels, index: index + 1, isDollarTopic: isDollarTopic, publisher: publisher,
                into: &result)
        }
    }

    private func add(_ node: TrieNode, publisher: String?, into result: inout Match) {
        if !node.sharedGroups.isEmpty { result.sharedGroups.append(contentsOf: node.sharedGroups.values) }
        // A node holds each client once: only clients matched at earlier nodes may repeat.
        let mayRepeat = !result.deliveries.isEmpty
        for (clientID, entry) in node.subscribers {
            if entry.options.noLocal && clientID == publisher { continue }
            result.add(entry, mayRepeat: mayRepeat)
        }
    }

    static func levels(_ filter: String) -> [Substring] { TopicLevels(filter).levels }
}
