public import Atomics
public import GatehouseAuth

/// One role's rules for one action, as a trie of pattern levels. A decision walks only the
/// branches the topic's levels can take, so rules of other roles and rules that cannot match
/// cost nothing.
final class PatternNode: @unchecked Sendable {
    // Built once by the compiler, then only read.
    var literals: [String: PatternNode] = [:]
    var single: PatternNode?
    var variables: [ACLVariable: PatternNode] = [:]
    /// Rules ending here.
    var rules: [ACLRule] = []
    /// Rules ending in `#` here (which also match this level itself).
    var multiRules: [ACLRule] = []
    /// Whether a deny rule ends anywhere below.
    var denyBelow = false

    func insert(_ rule: ACLRule, from index: Int = 0) {
        if rule.effect == .deny { denyBelow = true }
        guard index < rule.pattern.count else {
            rules.append(rule)
            return
        }
        let next: PatternNode
        switch rule.pattern[index] {
        case .multi:
            multiRules.append(rule)
            return
        case .literal(let text):
            next = literals[text] ?? PatternNode()
            literals[text] = next
        case .single:
            next = single ?? PatternNode()
            single = next
        case .variable(let variable):
            next = variables[variable] ?? PatternNode()
            variables[variable] = next
        }
        next.insert(rule, from: index + 1)
    }

    /// The first deny and the first allow whose pattern matches the topic (a name, no
    /// wildcards); stops at a deny. Patterns starting with a wildcard do not match `$` topics,
    /// as in MQTT. [MQTT-4.7.2-1]
    func match(
        _ levels: [Substring], _ index: Int, _ principal: Principal, deny: inout ACLRule?, allow: inout ACLRule?
    ) {
        let dollar = index == 0 && levels.first?.first == "$"
        if !dollar { note(multiRules, deny: &deny, allow: &allow) }
        guard deny == nil else { return }
        guard index < levels.count else {
            note(rules, deny: &deny, allow: &allow)
            return
        }
        let level = levels[index]
        literals[String(level)]?.match(levels, index + 1, principal, deny: &deny, allow: &allow)
        if !dollar, deny == nil { single?.match(levels, index + 1, principal, deny: &deny, allow: &allow) }
        guard !variables.isEmpty, deny == nil else { return }
        for (variable, node) in variables
        where variable.value(for: principal).map({ $0.utf8.elementsEqual(level.utf8) }) == true {
            node.match(levels, index + 1, principal, deny: &deny, allow: &allow)
        }
    }

    private func note(_ candidates: [ACLRule], deny: inout ACLRule?, allow: inout ACLRule?) {
        for rule in candidates {
            if rule.effect == .deny {
                deny = rule
                return
            }
            if allow == nil { allow = rule }
        }
    }

    /// An allow rule whose pattern matches every topic the filter can match.
    func coveringAllow(_ levels: [Substring], _ index: Int, _ principal: Principal) -> ACLRule? {
        let dollar = index == 0 && levels.first?.first == "$"
        if !dollar, let rule = multiRules.first(where: { $0.effect == .allow }) { return rule }
        guard index < levels.count else { return rules.first { $0.effect == .allow } }
        let level = levels[index]
        switch level {
        case "#":
            return nil  // only a '#' at this level covers it, handled above
        case "+":
            return single?.coveringAllow(levels, index + 1, principal)
        default:
            if let rule = literals[String(level)]?.coveringAllow(levels, index + 1, principal) { return rule }
            if !dollar, let rule = single?.coveringAllow(levels, index + 1, principal) { return rule }
            for (variable, node) in variables where variable.value(for: principal).map({ $0 == level }) == true {
                if let rule = node.coveringAllow(levels, index + 1, principal) { return rule }
            }
            return nil
        }
    }

    /// A deny rule whose pattern shares at least one topic with the filter.
    func intersectingDeny(_ levels: [Substring], _ index: Int, _ principal: Principal) -> ACLRule? {
        guard denyBelow else { return nil }
        let dollar = index == 0 && levels.first?.first == "$"
        if !dollar, let rule = multiRules.first(where: { $0.effect == .deny }) { return rule }
        guard index < levels.count else { return rules.first { $0.effect == .deny } }
        let level = levels[index]
        if level == "#" {
            // The filter matches this level and everything below it.
            return anyDeny(principal, dollar: dollar)
        }
        if level == "+" {
            for node in literals.values {
                if let rule = node.intersectingDeny(levels, index + 1, principal) { return rule }
            }
            for (variable, node) in variables where variable.value(for: principal) != nil {
                if let rule = node.intersectingDeny(levels, index + 1, principal) { return rule }
            }
        } else {
            if let rule = literals[String(level)]?.intersectingDeny(levels, index + 1, principal) { return rule }
            for (variable, node) in variables where variable.value(for: principal).map({ $0 == level }) == true {
                if let rule = node.intersectingDeny(levels, index + 1, principal) { return rule }
            }
        }
        if !dollar || level != "+", let rule = single?.intersectingDeny(levels, index + 1, principal) { return rule }
        return nil
    }

    private func anyDeny(_ principal: Principal, dollar: Bool) -> ACLRule? {
        guard denyBelow else { return nil }
        if let rule = (rules + multiRules).first(where: { $0.effect == .deny }) { return rule }
        for node in literals.values { if let rule = node.anyDeny(principal, dollar: false) { return rule } }
        for (variable, node) in variables where variable.value(for: principal) != nil {
            if let rule = node.anyDeny(principal, dollar: false) { return rule }
        }
        if !dollar { return single?.anyDeny(principal, dollar: false) }
        return nil
    }
}

/// A compiled ACL: per action, per role, a trie. Immutable; a reload builds a new one.
public final class ACLTable: Sendable, AtomicReference {
    private let tries: [Action: [String: PatternNode]]
    public let ruleCount: Int
    public let files: [String]

    /// Reads `path` and its includes; every error, or a table.
    public static func load(file path: String) throws(ACLErrors) -> ACLTable {
        let (rules, errors) = ACLParser.parse(file: path)
        guard errors.isEmpty else { throw ACLErrors(errors: errors) }
        return ACLTable(rules: rules)
    }

    init(rules: [ACLRule]) {
        var tries: [Action: [String: PatternNode]] = [:]
        for rule in rules {
            // Subscribing to a topic is for reading it: a subscribe rule also rules reading.
            let actions = rule.actions.contains(.subscribe) ? rule.actions.union([.read]) : rule.actions
            for action in actions {
                let root = tries[action]?[rule.role] ?? PatternNode()
                root.insert(rule)
                tries[action, default: [:]][rule.role] = root
            }
        }
        self.tries = tries
        self.ruleCount = rules.count
        self.files = Array(Set(rules.map(\.source.file))).sorted()
    }

    /// The decision and, for operators only, the rule that made it (nil: no rule allowed it).
    public func decide(_ principal: Principal, _ action: Action, topic: String) -> (Decision, ACLSource?) {
        decide(principal, action, topic: TopicLevels(topic))
    }

    public func decide(_ principal: Principal, _ action: Action, topic: TopicLevels) -> (Decision, ACLSource?) {
        guard let roleTries = tries[action] else { return (.reject, nil) }
        let levels = topic.levels
        var allowing: ACLRule?
        func consider(_ role: String) -> ACLRule? {
            guard let root = roleTries[role] else { return nil }
            if action == .subscribe {
                if let deny = root.intersectingDeny(levels, 0, principal) { return deny }
                if allowing == nil { allowing = root.coveringAllow(levels, 0, principal) }
                return nil
            }
            var deny: ACLRule?
            root.match(levels, 0, principal, deny: &deny, allow: &allowing)
            return deny
        }
        for role in principal.roles {
            if let deny = consider(role) { return (.reject, deny.source) }
        }
        if let deny = consider("*") { return (.reject, deny.source) }
        return allowing.map { (.accept, $0.source) } ?? (.reject, nil)
    }
}
