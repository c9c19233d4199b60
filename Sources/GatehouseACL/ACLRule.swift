public import GatehouseAuth

/// One level of a rule's topic pattern.
enum PatternLevel: Hashable, Sendable {
    case literal(String)
    /// `+`
    case single
    /// `#`, last level only
    case multi
    case variable(ACLVariable)
}

/// `%u` user name, `%c` client id, `%t` tenant, `%i` identity id: each a whole level.
public enum ACLVariable: String, Hashable, Sendable, CaseIterable {
    case username = "%u"
    case clientID = "%c"
    case tenant = "%t"
    case identityID = "%i"

    /// The principal's value, or nil when it could widen the rule (empty, or holding `+`,
    /// `#` or `/`): such a rule then matches nothing.
    func value(for principal: Principal) -> String? {
        let value =
            switch self {
            case .username: principal.username
            case .clientID: principal.clientIdentifier
            case .tenant: principal.tenant
            case .identityID: principal.identityID
            }
        // Bytes, not Characters: this runs on every uncached decision.
        guard !value.isEmpty,
            !value.utf8.contains(where: {
                $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == UInt8(ascii: "/")
            })
        else { return nil }
        return value
    }
}

public enum ACLEffect: String, Sendable {
    case allow, deny
}

/// Where a rule was written, for operators (lint, check, logs), never for clients.
public struct ACLSource: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var text: String

    public var description: String { "\(file):\(line): \(text)" }
}

/// A parsed rule: a role's allow or deny of some actions on a topic pattern. A class, so that
/// a decision passes references around rather than copying strings.
final class ACLRule: Sendable {
    let role: String
    let effect: ACLEffect
    let actions: Set<Action>
    let pattern: [PatternLevel]
    let source: ACLSource

    init(role: String, effect: ACLEffect, actions: Set<Action>, pattern: [PatternLevel], source: ACLSource) {
        self.role = role
        self.effect = effect
        self.actions = actions
        self.pattern = pattern
        self.source = source
    }
}
