import NIOConcurrencyHelpers

/// The connection limits checked once a CONNECT is authenticated: connected clients in all,
/// and per identity, so that one identity's leaked credential or reconnect loop cannot take
/// every slot. A refusal is CONNACK 0x97 Quota exceeded (3.1.1: 3 Server unavailable).
final class ConnectionAdmission: Sendable {
    enum Refusal: String {
        case maximumConnections = "max_connections"
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
    func admit(identity: String, replacing: Bool) -> Refusal? {
        counts.withLockedValue { counts in
            if !replacing {
                if maximumConnections > 0 && counts.total >= maximumConnections { return .maximumConnections }
                if maximumPerIdentity > 0 && counts.byIdentity[identity, default: 0] >= maximumPerIdentity {
                    return .maximumConnectionsPerIdentity
                }
            }
            counts.total += 1
            counts.byIdentity[identity, default: 0] += 1
            return nil
        }
    }

    func release(identity: String) {
        counts.withLockedValue { counts in
            counts.total -= 1
            let left = counts.byIdentity[identity, default: 1] - 1
            counts.byIdentity[identity] = left > 0 ? left : nil
        }
    }
}
