import Atomics
public import GatehouseAuth

/// The broker's authorizer: the current compiled table, swapped atomically by a reload.
/// Readers never lock; a decision uses one table from start to end.
public final class ACLAuthorizer: Authorizer, Sendable {
    private let current: ManagedAtomic<ACLTable>

    public init(_ table: ACLTable) { current = ManagedAtomic(table) }

    public var table: ACLTable { current.load(ordering: .acquiring) }

    public func replace(with table: ACLTable) { current.store(table, ordering: .releasing) }

    public func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision {
        table.decide(principal, action, topic: topic).0
    }
}
