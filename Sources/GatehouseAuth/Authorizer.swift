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
}

/// Accepts everything. A deployment gets it only by choosing it in its configuration.
public struct AllowAllAuthorizer: Authorizer {
    public init() {}
    public func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision { .accept }
}
