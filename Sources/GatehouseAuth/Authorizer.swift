/// What a principal asks to do with a topic.
public enum Action: Sendable, Hashable, CaseIterable {
    case publish
    case subscribe
    /// Receive a message on a topic that a subscription matched.
    case read
}

/// The only answers the broker ever gets, and so the only thing a client can learn.
public enum Decision: Sendable, Hashable {
    case accept
    case reject
}

/// Decides every PUBLISH, SUBSCRIBE and delivery. Called on event loops, so it must be fast
/// and must not block.
public protocol Authorizer: Sendable {
    func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision

    /// The same decision on a topic already split (a PUBLISH splits its topic once).
    func authorize(_ principal: Principal, _ action: Action, topic: TopicLevels) -> Decision

    /// Changes whenever the rules change, so that callers may cache decisions per connection
    /// and drop them when it moves; negative (the default) means decisions must not be cached.
    var generation: Int { get }
}

extension Authorizer {
    public var generation: Int { -1 }

    public func authorize(_ principal: Principal, _ action: Action, topic: TopicLevels) -> Decision {
        authorize(principal, action, topic: topic.name)
    }
}

/// A connection's recent decisions for one action, valid for one authorizer generation.
/// Telemetry goes to the same few topics over and over: a hit costs one dictionary lookup.
public struct DecisionCache: Sendable {
    private var decisions: [String: Decision] = [:]
    /// The last topic decided: a run of one topic (a device publishing, a fan-in into one
    /// subscriber) compares strings instead of hashing each.
    private var last: (topic: String, decision: Decision)?
    private var generation = -1
    private let capacity: Int

    public init(capacity: Int = 256) { self.capacity = capacity }

    public mutating func decide(
        _ authorizer: any Authorizer, _ principal: Principal, _ action: Action, topic: TopicLevels
    ) -> Decision {
        let current = authorizer.generation
        guard current >= 0 else { return authorizer.authorize(principal, action, topic: topic) }
        if current != generation {
            decisions.removeAll(keepingCapacity: true)
            last = nil
            generation = current
        }
        if let last, last.topic == topic.name { return last.decision }
        let decision: Decision
        if let known = decisions[topic.name] {
            decision = known
        } else {
            decision = authorizer.authorize(principal, action, topic: topic)
            if decisions.count >= capacity { decisions.removeAll(keepingCapacity: true) }
            decisions[topic.name] = decision
        }
        last = (topic.name, decision)
        return decision
    }
}

/// Accepts everything. A deployment gets it only by choosing it in its configuration.
public struct AllowAllAuthorizer: Authorizer {
    public init() {}
    public func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision { .accept }
}
