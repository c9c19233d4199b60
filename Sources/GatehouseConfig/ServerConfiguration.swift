public import GatehouseBroker
public import GatehouseTransport
import Yams

/// Everything `gatehouse serve` can be told, from the configuration file (YAML) and then
/// from command-line flags, which override the file.
public struct ServerConfiguration: Sendable, Equatable {
    public var listeners = [ListenAddress(host: "127.0.0.1", port: 1883)]
    public var dataDirectory = "./data"
    public var allowAnonymous = false
    public var logLevel = "info"
    /// Seconds between `$SYS` updates; 0 turns them off.
    public var sysInterval = 10
    public var limits = Limits()

    public struct Limits: Sendable, Equatable {
        public var maxPacketSize = 1_048_576
        public var connectTimeout = 10
        public var maxInflightMessages = 20
        public var maxQueuedMessages = 1_000
        public var receiveMaximum = 100
        public var topicAliasMaximum = 10
        public var maxTopicLevels = 128
        public var maxSubscriptionsPerClient = 10_000
        /// Seconds; 0 means no maximum.
        public var maxKeepAlive = 0

        public init() {}
    }

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    public init() {}

    /// The broker settings these limits give.
    public var brokerConfiguration: BrokerConfiguration {
        var configuration = BrokerConfiguration()
        configuration.maximumPacketSize = limits.maxPacketSize
        configuration.maximumInflightMessages = limits.maxInflightMessages
        configuration.maximumQueuedMessages = limits.maxQueuedMessages
        configuration.receiveMaximum = UInt16(limits.receiveMaximum)
        configuration.topicAliasMaximum = UInt16(limits.topicAliasMaximum)
        configuration.maximumTopicLevels = limits.maxTopicLevels
        configuration.maximumSubscriptionsPerClient = limits.maxSubscriptionsPerClient
        configuration.maximumKeepAlive = UInt16(limits.maxKeepAlive)
        return configuration
    }
}

/// A configuration problem, located as `file:line:column` where the file has one.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public var file: String
    public var line: Int?
    public var column: Int?
    public var message: String

    public var description: String {
        guard let line else { return "\(file): \(message)" }
        return "\(file):\(line):\(column ?? 1): \(message)"
    }
}

extension ServerConfiguration {
    private static let topLevelKeys = [
        "listeners", "data_dir", "allow_anonymous", "log_level", "sys_interval", "limits",
    ]
    private static let limitKeys = [
        "max_packet_size", "connect_timeout", "max_inflight_messages", "max_queued_messages", "receive_maximum",
        "topic_alias_maximum", "max_topic_levels", "max_subscriptions_per_client", "max_keep_alive",
    ]

    /// Reads a YAML configuration. Unknown keys, wrong types and out-of-range values are
    /// errors that name their line: a typo must not silently fall back to a default.
    public static func parse(_ text: String, file: String) throws(ConfigurationError) -> ServerConfiguration {
        var configuration = ServerConfiguration()
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigurationError(file: file, line: nil, column: nil, message: "not valid YAML: \(error)")
        } catch {
            throw ConfigurationError(file: file, line: nil, column: nil, message: "not valid YAML: \(error)")
        }
        guard let root else { return configuration }  // an empty file keeps every default
        let reader = NodeReader(file: file)
        for (keyNode, value) in try reader.mapping(root, "the top level") {
            let key = try reader.key(keyNode, allowed: topLevelKeys)
            switch key {
            case "listeners":
                configuration.listeners = []
                for item in try reader.sequence(value, key) {
                    let text = try reader.string(item, "a listener")
                    do {
                        configuration.listeners.append(try ListenAddress(parsing: text))
                    } catch {
                        throw reader.error(at: item, error.description)
                    }
                }
                if configuration.listeners.isEmpty {
                    throw reader.error(at: value, "'listeners' needs at least one URL")
                }
            case "data_dir": configuration.dataDirectory = try reader.string(value, key)
            case "allow_anonymous": configuration.allowAnonymous = try reader.bool(value, key)
            case "log_level":
                let level = try reader.string(value, key)
                guard logLevels.contains(level) else {
                    throw reader.error(at: value, "'log_level' must be one of \(logLevels.joined(separator: ", "))")
                }
                configuration.logLevel = level
            case "sys_interval": configuration.sysInterval = try reader.int(value, key, in: 0...86_400)
            default:  // "limits"
                for (limitKey, limitValue) in try reader.mapping(value, "'limits'") {
                    let name = try reader.key(limitKey, allowed: limitKeys, section: "limits")
                    try configuration.limits.set(name, from: limitValue, reader: reader)
                }
            }
        }
        return configuration
    }
}

extension ServerConfiguration.Limits {
    fileprivate mutating func set(_ name: String, from node: Node, reader: NodeReader) throws(ConfigurationError) {
        switch name {
        case "max_packet_size": maxPacketSize = try reader.int(node, name, in: 64...268_435_460)
        case "connect_timeout": connectTimeout = try reader.int(node, name, in: 1...3_600)
        case "max_inflight_messages": maxInflightMessages = try reader.int(node, name, in: 1...65_535)
        case "max_queued_messages": maxQueuedMessages = try reader.int(node, name, in: 1...10_000_000)
        case "receive_maximum": receiveMaximum = try reader.int(node, name, in: 1...65_535)
        case "topic_alias_maximum": topicAliasMaximum = try reader.int(node, name, in: 0...65_535)
        case "max_topic_levels": maxTopicLevels = try reader.int(node, name, in: 1...65_535)
        case "max_keep_alive": maxKeepAlive = try reader.int(node, name, in: 0...65_535)
        default: maxSubscriptionsPerClient = try reader.int(node, name, in: 1...10_000_000)
        }
    }
}

/// Typed reads from YAML nodes, each failure an error at the node's line.
private struct NodeReader {
    let file: String

    func error(at node: Node, _ message: String) -> ConfigurationError {
        // Yams counts lines and columns from 1 in its marks' descriptions; keep that.
        ConfigurationError(file: file, line: node.mark?.line, column: node.mark?.column, message: message)
    }

    func mapping(_ node: Node, _ what: String) throws(ConfigurationError) -> [(Node, Node)] {
        guard case .mapping(let mapping) = node else { throw error(at: node, "\(what) must be a mapping of keys") }
        return mapping.map { ($0.key, $0.value) }
    }

    func sequence(_ node: Node, _ key: String) throws(ConfigurationError) -> [Node] {
        guard case .sequence(let sequence) = node else { throw error(at: node, "'\(key)' must be a list") }
        return Array(sequence)
    }

    func key(_ node: Node, allowed: [String], section: String? = nil) throws(ConfigurationError) -> String {
        guard let key = node.string, allowed.contains(key) else {
            let place = section.map { " in '\($0)'" } ?? ""
            throw error(
                at: node,
                "unknown key '\(node.string ?? "?")'\(place); expected one of: \(allowed.joined(separator: ", "))")
        }
        return key
    }

    func string(_ node: Node, _ key: String) throws(ConfigurationError) -> String {
        guard case .scalar(let scalar) = node else { throw error(at: node, "'\(key)' must be a text value") }
        return scalar.string
    }

    func bool(_ node: Node, _ key: String) throws(ConfigurationError) -> Bool {
        guard let value = node.bool else { throw error(at: node, "'\(key)' must be true or false") }
        return value
    }

    func int(_ node: Node, _ key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let value = node.int else { throw error(at: node, "'\(key)' must be a whole number") }
        guard range.contains(value) else {
            throw error(at: node, "'\(key)' must be between \(range.lowerBound) and \(range.upperBound), not \(value)")
        }
        return value
    }
}
