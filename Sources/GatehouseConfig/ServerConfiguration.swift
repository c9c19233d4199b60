public import GatehouseBroker
public import GatehouseTransport
import Yams

/// Everything `gatehouse serve` can be told, from the configuration file (YAML) and then
/// from command-line flags, which override the file.
public struct ServerConfiguration: Sendable, Equatable {
    /// By default plain MQTT and MQTTS on loopback, the latter with development certificates.
    public var listeners = [
        ListenerOptions(address: ListenAddress(host: "127.0.0.1", port: 1883)),
        ListenerOptions(address: ListenAddress(kind: .tls, host: "127.0.0.1", port: 8883)),
    ]
    public var dataDirectory = "./data"
    public var allowAnonymous = false
    public var logLevel = "info"
    /// Seconds between `$SYS` updates; 0 turns them off.
    public var sysInterval = 10
    public var limits = Limits()
    public var authentication = Authentication()
    /// The identity store; nil means `DATA_DIR/iam.sqlite`.
    public var iamDatabase: String?
    /// The topic ACL file; nil means `./acl/default.acl`, or the built-in default when that is absent.
    public var aclFile: String?
    /// `acknowledge` (the default) or `disconnect`: what a PUBLISH the ACL refuses does to the connection.
    public var refusedPublish = "acknowledge"

    /// How CONNECT is authenticated: the methods in order, and the back-off after failures.
    public struct Authentication: Sendable, Equatable {
        public static let allMethods = ["certificate", "token", "jwt", "password"]
        /// Tried in this order; the first that accepts or rejects decides. Anonymous access,
        /// when allowed, comes last.
        public var methods = allMethods
        /// The wait before the next attempt after one failure from an address or for a user
        /// name; it doubles with each further failure up to `backoffMaximum`. 0 turns it off.
        public var backoffBaseMilliseconds = 100
        public var backoffMaximumMilliseconds = 30_000

        public init() {}
    }

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

    /// A listener as configured; TLS files not named come from the data directory.
    public struct ListenerOptions: Sendable, Equatable {
        public var address: ListenAddress
        public var tls: TLSOptions

        public init(address: ListenAddress, tls: TLSOptions = TLSOptions()) {
            self.address = address
            self.tls = tls
        }
    }

    /// The `tls:` keys of a listener. Without `certificate` and `key`, the listener uses the
    /// development certificates under `DATA_DIR/certs` (made on first start) and their CA for
    /// client certificates.
    public struct TLSOptions: Sendable, Equatable {
        public var certificate: String?
        public var key: String?
        public var keyPassword: String?
        public var clientCA: String?
        public var crl: String?
        public var clientCertificates: TLSSettings.ClientCertificates?

        public init() {}
    }

    /// Where the development certificates live.
    public var developmentCertificatesDirectory: String { dataDirectory + "/certs" }

    /// The listeners with every TLS file named, and whether any of them uses the development
    /// certificates (which `serve` then creates if missing).
    public func resolvedListeners() -> (listeners: [MQTTServer.Listener], usesDevelopmentCertificates: Bool) {
        var usesDevelopmentCertificates = false
        let listeners = listeners.map { options -> MQTTServer.Listener in
            guard options.address.kind.usesTLS else { return MQTTServer.Listener(address: options.address) }
            let tls = options.tls
            if let certificate = tls.certificate, let key = tls.key {
                return MQTTServer.Listener(
                    address: options.address,
                    tls: TLSSettings(
                        certificateFile: certificate, keyFile: key, keyPassword: tls.keyPassword,
                        clientCAFile: tls.clientCA, crlFile: tls.crl,
                        clientCertificates: tls.clientCertificates ?? (tls.clientCA == nil ? .none : .optional)))
            }
            usesDevelopmentCertificates = true
            let directory = developmentCertificatesDirectory
            return MQTTServer.Listener(
                address: options.address,
                tls: TLSSettings(
                    certificateFile: directory + "/server.pem", keyFile: directory + "/server.key",
                    clientCAFile: tls.clientCA ?? directory + "/ca.pem", crlFile: tls.crl,
                    clientCertificates: tls.clientCertificates ?? .optional))
        }
        return (listeners, usesDevelopmentCertificates)
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
        configuration.disconnectOnRefusedPublish = refusedPublish == "disconnect"
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
        "listeners", "data_dir", "allow_anonymous", "log_level", "sys_interval", "limits", "authentication",
        "iam_database", "acl", "acl_refused_publish",
    ]
    private static let authenticationKeys = ["methods", "backoff_base_ms", "backoff_max_ms"]
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
                    configuration.listeners.append(try reader.listener(item))
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
            case "iam_database": configuration.iamDatabase = try reader.string(value, key)
            case "acl": configuration.aclFile = try reader.string(value, key)
            case "acl_refused_publish":
                let choice = try reader.string(value, key)
                guard ["acknowledge", "disconnect"].contains(choice) else {
                    throw reader.error(at: value, "'acl_refused_publish' must be acknowledge or disconnect")
                }
                configuration.refusedPublish = choice
            case "authentication":
                for (authenticationKey, authenticationValue) in try reader.mapping(value, "'authentication'") {
                    let name = try reader.key(authenticationKey, allowed: authenticationKeys, section: "authentication")
                    switch name {
                    case "methods":
                        var methods: [String] = []
                        for item in try reader.sequence(authenticationValue, name) {
                            let method = try reader.string(item, "a method")
                            guard Authentication.allMethods.contains(method), !methods.contains(method) else {
                                throw reader.error(
                                    at: item,
                                    "'\(method)' is not a method, or is listed twice; methods are "
                                        + Authentication.allMethods.joined(separator: ", "))
                            }
                            methods.append(method)
                        }
                        configuration.authentication.methods = methods
                    case "backoff_base_ms":
                        configuration.authentication.backoffBaseMilliseconds = try reader.int(
                            authenticationValue, name, in: 0...60_000)
                    default:
                        configuration.authentication.backoffMaximumMilliseconds = try reader.int(
                            authenticationValue, name, in: 0...3_600_000)
                    }
                }
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

    private static let listenerKeys = ["url", "tls"]
    private static let tlsKeys = ["certificate", "key", "key_password", "client_ca", "crl", "client_certificates"]

    /// A listener: a URL, or a mapping with `url` and `tls`.
    func listener(_ node: Node) throws(ConfigurationError) -> ServerConfiguration.ListenerOptions {
        if case .scalar = node { return ServerConfiguration.ListenerOptions(address: try address(node)) }
        var address: ListenAddress?
        var tls = ServerConfiguration.TLSOptions()
        var tlsNode: Node?
        for (keyNode, value) in try mapping(node, "a listener") {
            switch try key(keyNode, allowed: Self.listenerKeys, section: "listeners") {
            case "url": address = try self.address(value)
            default:
                tlsNode = value
                for (tlsKey, tlsValue) in try mapping(value, "'tls'") {
                    let name = try key(tlsKey, allowed: Self.tlsKeys, section: "tls")
                    switch name {
                    case "certificate": tls.certificate = try string(tlsValue, name)
                    case "key": tls.key = try string(tlsValue, name)
                    case "key_password": tls.keyPassword = try string(tlsValue, name)
                    case "client_ca": tls.clientCA = try string(tlsValue, name)
                    case "crl": tls.crl = try string(tlsValue, name)
                    default:
                        let text = try string(tlsValue, name)
                        guard let mode = TLSSettings.ClientCertificates(rawValue: text) else {
                            throw error(at: tlsValue, "'client_certificates' must be none, optional or required")
                        }
                        tls.clientCertificates = mode
                    }
                }
            }
        }
        guard let address else { throw error(at: node, "a listener mapping needs a 'url'") }
        if let tlsNode {
            guard address.kind.usesTLS else {
                throw error(
                    at: tlsNode, "'tls' belongs to mqtts:// and wss:// listeners, not \(address.kind.rawValue)://")
            }
            guard (tls.certificate == nil) == (tls.key == nil) else {
                throw error(
                    at: tlsNode, "'tls' needs both 'certificate' and 'key', or neither (development certificates)")
            }
        }
        return ServerConfiguration.ListenerOptions(address: address, tls: tls)
    }

    private func address(_ node: Node) throws(ConfigurationError) -> ListenAddress {
        let text = try string(node, "a listener")
        do { return try ListenAddress(parsing: text) } catch { throw self.error(at: node, error.description) }
    }

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
