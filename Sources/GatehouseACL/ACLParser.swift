import Foundation
import GatehouseAuth
import MQTTCore

/// A mistake in an ACL file, at `file:line:column`, saying what was expected.
public struct ACLError: Error, Sendable, CustomStringConvertible, Equatable {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Every error of a file and its includes; a table is built only from a file without any.
public struct ACLErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ACLError]

    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Reads the ACL language:
///
///     default deny                     # required, once, in the top file
///     include tenants/*.acl            # relative to this file
///     role device
///       allow publish   tenants/%t/devices/%c/telemetry/#
///       allow subscribe tenants/%t/devices/%c/commands/+
///       deny  publish   tenants/%t/devices/%c/telemetry/debug/#
///     role operator
///       allow publish,subscribe tenants/%t/#
///
/// Actions: `publish`, `subscribe`, `read` (receive), `all`, or a comma-separated list.
/// `role *` holds rules for every authenticated client.
struct ACLParser {
    private(set) var rules: [ACLRule] = []
    private(set) var errors: [ACLError] = []
    private var sawDefaultDeny = false
    private var including: [String] = []

    static func parse(file path: String) -> (rules: [ACLRule], errors: [ACLError]) {
        var parser = ACLParser()
        parser.read(file: path, from: nil)
        if parser.errors.isEmpty, !parser.sawDefaultDeny {
            parser.errors.append(
                ACLError(
                    file: path, line: 1, column: 1,
                    message:
                        "the file must say 'default deny' (a request no rule allows is always rejected; write it down)"
                ))
        }
        return (parser.rules, parser.errors)
    }

    private mutating func read(file path: String, from includer: (file: String, line: Int, column: Int)?) {
        let canonical = (path as NSString).standardizingPath
        if including.contains(canonical) {
            let at = includer ?? (path, 1, 1)
            errors.append(
                ACLError(
                    file: at.file, line: at.line, column: at.column, message: "'\(path)' includes itself (a cycle)"))
            return
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            let at = includer ?? (path, 1, 1)
            errors.append(ACLError(file: at.file, line: at.line, column: at.column, message: "cannot read '\(path)'"))
            return
        }
        including.append(canonical)
        defer { including.removeLast() }
        var role: String?
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            parseLine(line, number: index + 1, file: path, isTop: includer == nil, role: &role)
        }
    }

    /// Whitespace-separated words with their 1-based columns; a word starting with `#` where
    /// no topic is expected begins a comment.
    private static func words(_ line: Substring) -> [(text: String, column: Int)] {
        var words: [(String, Int)] = []
        var current = ""
        var start = 0
        for (offset, character) in line.enumerated() {
            if character == " " || character == "\t" || character == "\r" {
                if !current.isEmpty { words.append((current, start + 1)) }
                current = ""
            } else {
                if current.isEmpty { start = offset }
                current.append(character)
            }
        }
        if !current.isEmpty { words.append((current, start + 1)) }
        return words
    }

    private mutating func parseLine(_ line: Substring, number: Int, file: String, isTop: Bool, role: inout String?) {
        var words = Self.words(line)
        guard let first = words.first, !first.text.hasPrefix("#") else { return }
        func error(_ column: Int, _ message: String) {
            errors.append(ACLError(file: file, line: number, column: column, message: message))
        }
        // Comments after the meaningful words; for rules the topic (third word) may start with '#'.
        let meaningful = first.text == "allow" || first.text == "deny" ? 3 : 2
        if let comment = words.indices.dropFirst(meaningful).first(where: { words[$0].text.hasPrefix("#") }) {
            words.removeSubrange(comment...)
        }
        switch first.text {
        case "default":
            guard words.count == 2, words[1].text == "deny" else {
                error(first.column, "expected 'default deny': it is the only default")
                return
            }
            guard isTop else {
                error(first.column, "'default deny' belongs in the top file, not in an included one")
                return
            }
            sawDefaultDeny = true
        case "include":
            guard words.count == 2 else {
                error(first.column, "expected 'include PATH' (a file or a pattern such as tenants/*.acl)")
                return
            }
            let pattern = words[1].text
            let base = (file as NSString).deletingLastPathComponent
            let full = pattern.hasPrefix("/") ? pattern : (base as NSString).appendingPathComponent(pattern)
            for path in Self.glob(full) { read(file: path, from: (file, number, words[1].column)) }
        case "role":
            guard words.count == 2 else {
                error(first.column, "expected 'role NAME'")
                return
            }
            let name = words[1].text
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@:")
            guard name == "*" || name.allSatisfy(allowed.contains) else {
                error(words[1].column, "a role name is letters, digits or - _ . @ : (or * for everyone)")
                return
            }
            role = name
        case "allow", "deny":
            guard let role else {
                error(first.column, "a rule must follow a 'role NAME' line")
                return
            }
            guard words.count >= 3 else {
                error(first.column, "expected '\(first.text) ACTIONS TOPIC', e.g. '\(first.text) publish sensors/%c/#'")
                return
            }
            if words.count > 3 {
                error(words[3].column, "unexpected '\(words[3].text)' after the topic")
                return
            }
            guard let actions = Self.actions(words[1].text) else {
                error(words[1].column, "expected publish, subscribe, read or all (or a list such as publish,subscribe)")
                return
            }
            guard let pattern = Self.pattern(words[2].text, report: { error(words[2].column, $0) }) else { return }
            rules.append(
                ACLRule(
                    role: role, effect: first.text == "allow" ? .allow : .deny, actions: actions, pattern: pattern,
                    source: ACLSource(
                        file: file, line: number, text: words.map(\.text).joined(separator: " "))))
        default:
            error(first.column, "expected 'default deny', 'include', 'role', 'allow' or 'deny', not '\(first.text)'")
        }
    }

    static func actions(_ text: String) -> Set<Action>? {
        var actions = Set<Action>()
        for word in text.split(separator: ",", omittingEmptySubsequences: false) {
            switch word {
            case "publish": actions.insert(.publish)
            case "subscribe": actions.insert(.subscribe)
            case "read": actions.insert(.read)
            case "all": actions.formUnion(Action.allCases)
            default: return nil
            }
        }
        return actions.isEmpty ? nil : actions
    }

    static func pattern(_ text: String, report: (String) -> Void) -> [PatternLevel]? {
        var levels: [PatternLevel] = []
        for level in text.split(separator: "/", omittingEmptySubsequences: false) {
            if level.contains("%") {
                guard let variable = ACLVariable(rawValue: String(level)) else {
                    report("'\(level)': a variable is %u, %c, %t or %i, and fills a whole level")
                    return nil
                }
                levels.append(.variable(variable))
            } else if level == "+" {
                levels.append(.single)
            } else if level == "#" {
                levels.append(.multi)
            } else {
                levels.append(.literal(String(level)))
            }
        }
        // With variables taken as one literal level, the rest must be a valid MQTT topic filter.
        let checked = levels.map { level -> String in
            switch level {
            case .literal(let text): text
            case .single: "+"
            case .multi: "#"
            case .variable: "v"
            }
        }.joined(separator: "/")
        guard MQTTTopic.isValidTopicFilter(checked) else {
            report("'\(text)' is not a valid topic filter ('#' only last, '+' and '#' alone in their level)")
            return nil
        }
        return levels
    }

    private static func glob(_ pattern: String) -> [String] {
        guard pattern.contains(where: { "*?[".contains($0) }) else { return [pattern] }
        var result = glob_t()
        defer { globfree(&result) }
        guard Foundation.glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { result.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }
}
