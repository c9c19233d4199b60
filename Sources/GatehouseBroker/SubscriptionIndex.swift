import Atomics
public import GatehouseAuth
import NIOConcurrencyHelpers

/// The broker's subscription trie, shared by every event loop.
///
/// PUBLISH reads far outnumber SUBSCRIBE writes, so readers take no lock: they load the
/// current immutable snapshot with one atomic read. Writers serialize on a lock, build the
/// next snapshot by path copying (cost: the filter's depth), and publish it atomically.
public final class SubscriptionIndex: Sendable {
    private final class Snapshot: AtomicReference, Sendable {
        let trie: SubscriptionTrie
        /// Counts the snapshots, so that a cached match can tell it is still current without
        /// holding on to the trie it came from.
        let generation: UInt64
        init(_ trie: SubscriptionTrie, generation: UInt64) {
            self.trie = trie
            self.generation = generation
        }
    }

    private let current = ManagedAtomic(Snapshot(SubscriptionTrie(), generation: 1))
    private let writer = NIOLock()

    public init() {}

    public var snapshot: SubscriptionTrie { current.load(ordering: .acquiring).trie }

    /// The match for a PUBLISH on `topic`, reused from `cache` while neither the index nor the
    /// topic has changed: a device (or each publisher of a fan-in) sends to one topic over and
    /// over, and walking the trie again would find the same clients.
    public func matchAll(
        topic: TopicLevels, publisherClientID: String?, cache: inout MatchCache
    ) -> SubscriptionTrie.Match {
        let snapshot = current.load(ordering: .acquiring)
        if let entry = cache.entry, entry.generation == snapshot.generation, entry.topic.name == topic.name,
            entry.publisherClientID == publisherClientID
        {
            // Known to be too large to keep: matched afresh, the entry as it is.
            return entry.match ?? snapshot.trie.matchAll(topic: topic, publisherClientID: publisherClientID)
        }
        let match = snapshot.trie.matchAll(topic: topic, publisherClientID: publisherClientID)
        // A large match stays uncached: a publisher's cache holds its sessions until the next PUBLISH.
        let cacheable = match.deliveries.count + match.sharedGroups.count <= MatchCache.maximumClients
        cache.entry = MatchCache.Entry(
            generation: snapshot.generation, topic: topic, publisherClientID: publisherClientID,
            match: cacheable ? match : nil)
        return match
    }

    /// Applies a change to the trie and publishes the result; returns what the change returned.
    @discardableResult
    public func update<Result>(_ change: (inout SubscriptionTrie) -> Result) -> Result {
        writer.withLock {
            let previous = current.load(ordering: .relaxed)
            var trie = previous.trie
            let result = change(&trie)
            current.store(Snapshot(trie, generation: previous.generation + 1), ordering: .releasing)
            return result
        }
    }
}

/// One publisher's last topic, split, and the clients it matched (see
/// `SubscriptionIndex.matchAll(topic:publisherClientID:cache:)`). Behind one reference, so
/// that a connection that never publishes pays a pointer for it.
public struct MatchCache: Sendable {
    static var maximumClients: Int { 8 }

    fileprivate final class Entry: Sendable {
        let generation: UInt64
        let topic: TopicLevels
        let publisherClientID: String?
        let match: SubscriptionTrie.Match?

        init(generation: UInt64, topic: TopicLevels, publisherClientID: String?, match: SubscriptionTrie.Match?) {
            self.generation = generation
            self.topic = topic
            self.publisherClientID = publisherClientID
            self.match = match
        }
    }

    fileprivate var entry: Entry?

    public init() {}

    /// `topic` split into levels, reusing the last split when the topic is the same.
    public func levels(of topic: String) -> TopicLevels {
        if let last = entry?.topic, last.name == topic { return last }
        return TopicLevels(topic)
    }
}
