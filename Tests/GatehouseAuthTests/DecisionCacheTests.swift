import GatehouseAuth
import Synchronization
import Testing

@Suite("decision cache")
struct DecisionCacheTests {
    /// Rejects "secret/…" and counts how often it is asked; `generation` is set by the test.
    final class CountingAuthorizer: Authorizer {
        let asked = Atomic<Int>(0)
        let current = Atomic<Int>(0)
        var generation: Int { current.load(ordering: .relaxed) }

        func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision {
            asked.add(1, ordering: .relaxed)
            return topic.hasPrefix("secret") ? .reject : .accept
        }
    }

    private let someone = Principal(identityID: "i", username: "u", clientIdentifier: "c", tenant: "t", roles: [])

    @Test("a repeated topic is decided once per generation; a new generation decides again")
    func generations() {
        let authorizer = CountingAuthorizer()
        var cache = DecisionCache(capacity: 2)
        for _ in 0..<5 { #expect(cache.decide(authorizer, someone, .publish, topic: TopicLevels("a")) == .accept) }
        #expect(cache.decide(authorizer, someone, .publish, topic: TopicLevels("secret/x")) == .reject)
        #expect(authorizer.asked.load(ordering: .relaxed) == 2)
        authorizer.current.store(1, ordering: .relaxed)
        #expect(cache.decide(authorizer, someone, .publish, topic: TopicLevels("a")) == .accept)
        #expect(authorizer.asked.load(ordering: .relaxed) == 3)
        // Full at capacity: cleared rather than grown.
        _ = cache.decide(authorizer, someone, .publish, topic: TopicLevels("b"))
        _ = cache.decide(authorizer, someone, .publish, topic: TopicLevels("c"))
        _ = cache.decide(authorizer, someone, .publish, topic: TopicLevels("a"))
        #expect(authorizer.asked.load(ordering: .relaxed) == 6)
    }

    @Test("alternating topics each keep their own decision")
    func alternating() {
        let authorizer = CountingAuthorizer()
        var cache = DecisionCache()
        let answers = ["a", "secret/x", "secret/x", "a", "secret/x"].map {
            cache.decide(authorizer, someone, .read, topic: TopicLevels($0))
        }
        #expect(answers == [.accept, .reject, .reject, .accept, .reject])
        #expect(authorizer.asked.load(ordering: .relaxed) == 2)
    }

    @Test("an authorizer without a generation is never cached")
    func uncached() {
        var cache = DecisionCache()
        struct Flip: Authorizer {
            let answer: Decision
            func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision { answer }
        }
        #expect(cache.decide(Flip(answer: .reject), someone, .read, topic: TopicLevels("a")) == .reject)
        #expect(cache.decide(Flip(answer: .accept), someone, .read, topic: TopicLevels("a")) == .accept)
    }
}
