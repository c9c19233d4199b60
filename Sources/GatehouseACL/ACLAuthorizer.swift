import Atomics
public import GatehouseAuth

/// The broker's authorizer: the current compiled table, swapped atomically by a reload.
/// Readers never lock; a decision uses one table from start to end.
public final class ACLAuthorizer: Authorizer, Sendable {
    private let current: ManagedAtomic<ACLTable>
    private let changes = ManagedAtomic<Int>(0)

    public init(_ table: ACLTable) { current = ManagedAtomic(table) }

    public var table: ACLTable { current.load(ordering: .acquiring) }

    /// Moves after the new table is in place: a cache that sees the new generation decides
    /// again against the new table.
    public var generation: Int { changes.load(ordering: .acquiring) }

    public func replace(with table: ACLTable) {
        current.store(table, ordering: .releasing)
        changes.wrappingIncrement(ordering: .releasing)
    }

    public func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision {
        table.decide(principal, action, topic: TopicLevels(topic)).0
    }

    public func authorize(_ principal: Principal, _ action: Action, topic: TopicLevels) -> Decision {
        table.decide(principal, action, topic: topic).0
    }
}
