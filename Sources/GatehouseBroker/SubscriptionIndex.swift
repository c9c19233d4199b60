import Atomics
import NIOConcurrencyHelpers

/// The broker's subscription trie, shared by every event loop.
///
/// PUBLISH reads far outnumber SUBSCRIBE writes, so readers take no lock: they load the
/// current immutable snapshot with one atomic read. Writers serialize on a lock, build the
/// next snapshot by path copying (cost: the filter's depth), and publish it atomically.
public final class SubscriptionIndex: Sendable {
    private final class Snapshot: AtomicReference, Sendable {
        let trie: SubscriptionTrie
        init(_ trie: SubscriptionTrie) { self.trie = trie }
    }

    private let current = ManagedAtomic(Snapshot(SubscriptionTrie()))
    private let writer = NIOLock()

    public init() {}

    public var snapshot: SubscriptionTrie { current.load(ordering: .acquiring).trie }

    /// Applies a change to the trie and publishes the result; returns what the change returned.
    @discardableResult
    public func update<Result>(_ change: (inout SubscriptionTrie) -> Result) -> Result {
        writer.withLock {
            var trie = current.load(ordering: .relaxed).trie
            let result = change(&trie)
            current.store(Snapshot(trie), ordering: .releasing)
            return result
        }
    }
}
