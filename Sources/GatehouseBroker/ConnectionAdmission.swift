import Atomics
import NIOConcurrencyHelpers

/// One listener's connected clients: its own `max_connections` (Mosquitto's per-listener
/// limit) and `gatehouse_connections_by_listener`.
public final class ListenerConnections: Sendable {
    /// 0 for no limit.
    public let maximum: Int
    private let connected = ManagedAtomic<Int>(0)

    public init(maximum: Int) { self.maximum = maximum }

    public var count: Int { connected.load(ordering: .relaxed) }

    /// Takes a slot unless the listener is full; `always` for a takeover, whose old
    /// connection is about to give one back.
    func take(always: Bool) -> Bool {
        if maximum == 0 || always {
            connected.wrappingIncrement(ordering: .relaxed)
            return true
        }
        var current = connected.load(ordering: .relaxed)
        while current < maximum {
            let (exchanged, original) = connected.weakCompareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    func release() { connected.wrappingDecrement(ordering: .relaxed) }
}

/// The connection limits checked once a CONNECT is authenticated: connected clients in all,
/// on the listener, and per identity, so that one identity's leaked credential or reconnect
/// loop cannot take every slot. A refusal is CONNACK 0x97 Quota exceeded (3.1.1: 3 Server
/// unavailable).
final class ConnectionAdmission: Sendable {
    enum Refusal: String {
        case maximumConnections = "max_connections"
        case maximumListenerConnections = "max_connections_per_listener"
        case maximumConnectionsPerIdentity = "max_connections_per_identity"
    }

    private struct Counts {
        var total = 0
        var byIdentity: [String: Int] = [:]
    }

    private let maximumConnections: Int
    private let maximumPerIdentity: Int
    private let counts = NIOLockedValueBox(Counts())

    /// 0 for no limit.
    init(maximumConnections: Int, maximumPerIdentity: Int) {
        self.maximumConnections = maximumConnections
        self.maximumPerIdentity = maximumPerIdentity
    }

    /// Takes a slot for `identity`, or says which limit is full. A takeover of the identity's
    /// own connected session (`replacing`) always gets one: the old connection is about to go.
    func admit(identity: String, on listener: ListenerConnections?, replacing: Bool) -> Refusal? {
        counts.withLockedValue { counts in
            if !replacing {
                if maximumConnections > 0 && counts.total >= maximumConnections { return .maximumConnections }
                if maximumPerIdentity > 0 && counts.byIdentity[identity, default: 0] >= maximumPerIdentity {
                    return .maximumConnectionsPerIdentity
                }
            }
            if let listener, !listener.take(always: replacing) { return .maximumListenerConnections }
            counts.total += 1
            counts.byIdentity[identity, default: 0] += 1
            return nil
        }
    }

    func release(identity: String, on listener: ListenerConnections?) {
        listener?.release()
        counts.withLockedValue { counts in
            counts.total -= 1
            let left = counts.byIdentity[identity, default: 1] - 1
            counts.byIdentity[identity] = left > 0 ? left : nil
        }
    }
}
