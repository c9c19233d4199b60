public import GatehouseBroker
public import GatehouseHTTP
public import GatehouseIAM
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
    /// The HTTP side (OAuth2, JWKS, discovery) on loopback only, unless configured otherwise.
    public var httpListeners = [HTTPListenerOptions(secure: false, host: "127.0.0.1", port: 8080)]
    public var http = HTTPSettings()
    public var oauth = OAuthSettings()
    /// The `iss` of the tokens the token endpoint signs and its RFC 8414 issuer; nil takes
    /// `http.public_url`, and without that `gatehouse`.
    public var oauthIssuer: String?
    public var issuerIdentifier: String? { oauthIssuer ?? http.publicURL }
    /// CA certificates (PEM) trusted for clients' `jwks_uri`; nil uses the system's roots.
    public var jwksCAFile: String?
    public var enrollment = Enrollment()

    /// The enrollment CA that signs devices' CSRs; without files, the development CA.
    public struct Enrollment: Sendable, Equatable {
        public var enabled = true
        public var caCertificate: String?
        public var caKey: String?
        public var validityDays = 30

        public init() {}
    }

    /// The enrollment CA's files, and whether they are the development CA's (made if missing).
    public var enrollmentAuthorityFiles: (certificate: String, key: String, development: Bool) {
        if let certificate = enrollment.caCertificate, let key = enrollment.caKey { return (certificate, key, false) }
        let directory = developmentCertificatesDirectory
        return (directory + "/ca.pem", directory + "/ca.key", true)
    }
    public var dataDirectory = "./data"
    public var persistence = Persistence()

    /// The broker's durable store: on by default, in its own file beside the IAM's.
    public struct Persistence: Sendable, Equatable {
        public var enabled = true
        public var file: String?
        /// "normal" survives a process crash; "full" also a power loss.
        public var durability = "normal"
        public var commitIntervalMicroseconds = 2_000
        /// What stored deliveries may hold in total; 0 for no limit.
        public var maximumStoredBytes = 1 << 30
        public static let durabilities = ["normal", "full"]
    }

    public var persistenceFile: String {
        persistence.file ?? dataDirectory + "/broker.sqlite"
    }
    public var allowAnonymous = false
    public var logLevel = "info"
    /// `text` (one readable line per event) or `json` (one JSON object per line).
    public var logFormat = "text"
    public static let logFormats = ["text", "json"]
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
        /// MQTT 5 enhanced authentication methods (AUTH exchange), offered by these names.
        public static let allEnhancedMethods = ["SCRAM-SHA-256", "GH-TOKEN", "GH-JWT"]
        public var enhancedMethods = allEnhancedMethods

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
        /// Connected clients at most, in all and per identity; 0 means no limit.
        public var maxConnections = 0
        public var maxConnectionsPerIdentity = 0
        /// Accepted connections that have not finished CONNECT; past it the oldest is closed.
        public var maxPendingConnects = 5_000
        /// PUBLISH packets and payload bytes per second one client may send; 0 means no limit.
        public var maxPublishRate = 0
        public var maxPublishBytesRate = 0
        /// Memory queued messages may hold, all sessions together; 0 means no limit.
        public var maxQueuedBytes = 1 << 30

        public init() {}
    }

    /// A listener as configured; TLS files not named come from the data directory.
    public struct ListenerOptions: Sendable, Equatable {
        public var address: ListenAddress
        public var tls: TLSOptions
        /// Clients this listener holds at most, within `limits.max_connections`; 0: no own limit.
        public var maxConnections: Int

        public init(address: ListenAddress, tls: TLSOptions = TLSOptions(), maxConnections: Int = 0) {
            self.address = address
            self.tls = tls
            self.maxConnections = maxConnections
        }
    }

    /// An http:// or https:// listener of the HTTP side.
    public struct HTTPListenerOptions: Sendable, Equatable {
        public var secure: Bool
        public var host: String
        public var port: Int
        public var tls = TLSOptions()

        public init(secure: Bool, host: String, port: Int, tls: TLSOptions = TLSOptions()) {
            self.secure = secure
            self.host = host
            self.port = port
            self.tls = tls
        }

        /// `http://HOST:PORT` or `https://HOST:PORT`; nil for any other scheme.
        public static func parse(_ text: String) throws(ListenAddress.ParseError) -> HTTPListenerOptions? {
            let lowered = text.lowercased()
            let secure = lowered.hasPrefix("https://")
            guard secure || lowered.hasPrefix("http://") else { return nil }
            let rest = text.drop(while: { $0 != ":" }).dropFirst(3)
            guard !rest.contains("/") else {
                throw ListenAddress.ParseError(description: "an HTTP listener takes no path (in '\(text)')")
            }
            let address = try ListenAddress(parsing: "mqtt://" + rest)
            return HTTPListenerOptions(secure: secure, host: address.host, port: address.port)
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
        let enrollmentCA = enrollment.enabled ? [enrollmentAuthorityFiles.certificate] : []
        let listeners = listeners.map { options -> MQTTServer.Listener in
            guard options.address.kind.usesTLS else {
                return MQTTServer.Listener(address: options.address, maximumConnections: options.maxConnections)
            }
            var listener = resolvedListener(options)
            listener.maximumConnections = options.maxConnections
            // Devices enrolled by the built-in CA connect on every listener that asks for certificates.
            if listener.tls?.clientCertificates != TLSSettings.ClientCertificates.none {
                listener.tls?.additionalClientCAFiles = enrollmentCA
            }
            if options.tls.certificate == nil || options.tls.key == nil { usesDevelopmentCertificates = true }
            return listener
        }
        return (listeners, usesDevelopmentCertificates)
    }

    private func resolvedListener(_ options: ListenerOptions) -> MQTTServer.Listener {
        let tls = options.tls
        if let certificate = tls.certificate, let key = tls.key {
            return MQTTServer.Listener(
                address: options.address,
                tls: TLSSettings(
                    certificateFile: certificate, keyFile: key, keyPassword: tls.keyPassword,
                    clientCAFile: tls.clientCA, crlFile: tls.crl,
                    clientCertificates: tls.clientCertificates ?? (tls.clientCA == nil ? .none : .optional)))
        }
        let directory = developmentCertificatesDirectory
        return MQTTServer.Listener(
            address: options.address,
            tls: TLSSettings(
                certificateFile: directory + "/server.pem", keyFile: directory + "/server.key",
                clientCAFile: tls.clientCA ?? directory + "/ca.pem", crlFile: tls.crl,
                clientCertificates: tls.clientCertificates ?? .optional))
    }

    /// The HTTP listeners with their TLS files named (the development certificates where none
    /// are), and whether any uses the development certificates.
    public func resolvedHTTPListeners() -> (
        listeners: [(host: String, port: Int, tls: TLSSettings?)], usesDevelopmentCertificates: Bool
    ) {
        var usesDevelopmentCertificates = false
        let directory = developmentCertificatesDirectory
        let listeners = httpListeners.map { options -> (host: String, port: Int, tls: TLSSettings?) in
            guard options.secure else { return (options.host, options.port, nil) }
            let tls = options.tls
            if let certificate = tls.certificate, let key = tls.key {
                return (
                    options.host, options.port,
                    TLSSettings(
                        certificateFile: certificate, keyFile: key, keyPassword: tls.keyPassword,
                        clientCertificates: .none)
                )
            }
            usesDevelopmentCertificates = true
            return (
                options.host, options.port,
                TLSSettings(
                    certificateFile: directory + "/server.pem", keyFile: directory + "/server.key",
                    clientCertificates: .none)
            )
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
        configuration.maximumConnections = limits.maxConnections
        configuration.maximumConnectionsPerIdentity = limits.maxConnectionsPerIdentity
        configuration.maximumPublishRate = limits.maxPublishRate
        configuration.maximumPublishBytesRate = limits.maxPublishBytesRate
        configuration.maximumQueuedBytes = limits.maxQueuedBytes
        configuration.disconnectOnRefusedPublish = refusedPublish == "disconnect"
        configuration.maximumStoredBytes = persistence.maximumStoredBytes
        return configuration
    }
}

/// A configuration problem, located as `file:line:column` where the file has one.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public var file: String
    public var line: Int?
    public var column: Int?
    public var message: String

    public init(file: String, line: Int? = nil, column: Int? = nil, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String {
        guard let line else { return "\(file): \(message)" }
        return "\(file):\(line):\(column ?? 1): \(message)"
    }
}

extension ServerConfiguration {
    private static let topLevelKeys = [
        "listeners", "data_dir", "allow_anonymous", "log_level", "log_format", "sys_interval", "limits",
        "authentication",
        "iam_database", "acl", "acl_refused_publish", "http", "oauth", "enrollment", "persistence",
    ]
    fileprivate static let persistenceKeys = [
        "enabled", "file", "durability", "commit_interval_us", "max_stored_bytes",
    ]
    private static let enrollmentKeys = ["enabled", "ca_certificate", "ca_key", "validity_days"]
    private static let httpKeys = [
        "public_url", "max_body_size", "token_rate_per_address", "token_rate_per_client", "service_user_token_lifetime",
        "metrics_require_token",
    ]
    private static let oauthKeys = [
        "access_token_lifetime", "refresh_token_lifetime", "max_assertion_lifetime", "refresh_retry_window",
        "jwks_cache_seconds", "jwks_ca_file", "issuer",
    ]
    private static let authenticationKeys = ["methods", "enhanced_methods", "backoff_base_ms", "backoff_max_ms"]
    private static let limitKeys = [
        "max_packet_size", "connect_timeout", "max_inflight_messages", "max_queued_messages", "receive_maximum",
        "topic_alias_maximum", "max_topic_levels", "max_subscriptions_per_client", "max_keep_alive",
        "max_connections", "max_connections_per_identity", "max_pending_connects", "max_publish_rate",
        "max_publish_bytes_rate", "max_queued_bytes",
    ]

    /// Reads a YAML configuration. Unknown keys, wrong types and out-of-range values are
    /// errors that name their line: a typo must not silently fall back to a default.
    public static func parse(_ text: String, file: String) throws(ConfigurationError) -> ServerConfiguration {
        try read(try compose(text, file: file), file: file)
    }

    /// The prefix of the environment variables that set configuration keys.
    public static let environmentPrefix = "GATEHOUSE_"

    /// Reads the configuration file's text (nil: there is none) with environment variables on
    /// top, EMQX's way: `GATEHOUSE_LIMITS__MAX_PACKET_SIZE=65536` sets `max_packet_size` in
    /// `limits` (`__` between levels). A value is read as YAML, so `[a, b]` is a list. A
    /// variable without `__` that names no top-level key (`GATEHOUSE_BINARY`) is not a
    /// setting and is ignored; a bad one is an error naming the variable.
    public static func parse(
        _ text: String?, file: String, environment: [String: String]
    ) throws(ConfigurationError) -> ServerConfiguration {
        var root: Node?
        if let text { root = try compose(text, file: file) }
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix(environmentPrefix) {
            let path = name.dropFirst(environmentPrefix.count).lowercased().split(
                separator: "__", omittingEmptySubsequences: false
            ).map(String.init)
            guard path.count > 1 || topLevelKeys.contains(path[0]) else { continue }
            let origin = "environment variable \(name)"
            guard !path.contains(where: \.isEmpty) else {
                throw ConfigurationError(file: origin, message: "an empty key between '__'")
            }
            let valueNode = (try? Yams.compose(yaml: value)).flatMap { $0 } ?? Node(value)
            // Read alone first, so that a bad value is reported against its variable.
            do { _ = try read(Node.setting(path[...], to: valueNode, in: nil), file: origin) } catch {
                throw ConfigurationError(file: origin, message: error.message)
            }
            root = Node.setting(path[...], to: valueNode, in: root)
        }
        return try read(root, file: file)
    }

    private static func compose(_ text: String, file: String) throws(ConfigurationError) -> Node? {
        do {
            return try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError(file: file, message: "not valid YAML: \(error)")
        }
    }

    private static func read(_ root: Node?, file: String) throws(ConfigurationError) -> ServerConfiguration {
        var configuration = ServerConfiguration()
        guard let root else { return configuration }  // an empty file keeps every default
        let reader = NodeReader(file: file)
        for (keyNode, value) in try reader.mapping(root, "the top level") {
            let key = try reader.key(keyNode, allowed: topLevelKeys)
            switch key {
            case "listeners":
                configuration.listeners = []
                configuration.httpListeners = []
                for item in try reader.sequence(value, key) {
                    switch try reader.listener(item) {
                    case .mqtt(let listener): configuration.listeners.append(listener)
                    case .http(let listener): configuration.httpListeners.append(listener)
                    }
                }
                if configuration.listeners.isEmpty {
                    let needs = configuration.httpListeners.isEmpty ? "URL" : "MQTT listener URL"
                    throw reader.error(at: value, "'listeners' needs at least one \(needs)")
                }
            case "http":
                for (httpKey, httpValue) in try reader.mapping(value, "'http'") {
                    let name = try reader.key(httpKey, allowed: httpKeys, section: "http")
                    switch name {
                    case "public_url":
                        let url = try reader.string(httpValue, name)
                        guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                            throw reader.error(at: httpValue, "'public_url' must be an http:// or https:// URL")
                        }
                        configuration.http.publicURL = url
                    case "max_body_size":
                        configuration.http.maximumBodySize = try reader.int(httpValue, name, in: 1_024...16_777_216)
                    case "service_user_token_lifetime":
                        configuration.http.serviceUserTokenLifetime = Int64(
                            try reader.int(httpValue, name, in: 60...86_400))
                    case "metrics_require_token":
                        configuration.http.metricsRequireToken = try reader.bool(httpValue, name)
                    case "token_rate_per_address":
                        configuration.http.tokenRequestsPerAddress = Double(
                            try reader.int(httpValue, name, in: 0...1_000_000))
                    default:
                        configuration.http.tokenRequestsPerClient = Double(
                            try reader.int(httpValue, name, in: 0...1_000_000))
                    }
                }
            case "enrollment":
                for (enrollmentKey, enrollmentValue) in try reader.mapping(value, "'enrollment'") {
                    let name = try reader.key(enrollmentKey, allowed: enrollmentKeys, section: "enrollment")
                    switch name {
                    case "enabled": configuration.enrollment.enabled = try reader.bool(enrollmentValue, name)
                    case "ca_certificate":
                        configuration.enrollment.caCertificate = try reader.string(enrollmentValue, name)
                    case "ca_key": configuration.enrollment.caKey = try reader.string(enrollmentValue, name)
                    default:
                        configuration.enrollment.validityDays = try reader.int(enrollmentValue, name, in: 1...3_650)
                    }
                }
                guard (configuration.enrollment.caCertificate == nil) == (configuration.enrollment.caKey == nil) else {
                    throw reader.error(at: value, "'enrollment' needs both 'ca_certificate' and 'ca_key', or neither")
                }
            case "oauth":
                for (oauthKey, oauthValue) in try reader.mapping(value, "'oauth'") {
                    let name = try reader.key(oauthKey, allowed: oauthKeys, section: "oauth")
                    switch name {
                    case "access_token_lifetime":
                        configuration.oauth.accessTokenLifetime = Int64(
                            try reader.int(oauthValue, name, in: 10...86_400))
                    case "refresh_token_lifetime":
                        configuration.oauth.refreshTokenLifetime = Int64(
                            try reader.int(oauthValue, name, in: 60...31_536_000))
                    case "max_assertion_lifetime":
                        configuration.oauth.maximumAssertionLifetime = Int64(
                            try reader.int(oauthValue, name, in: 10...86_400))
                    case "refresh_retry_window":
                        configuration.oauth.refreshRetryWindow = Int64(try reader.int(oauthValue, name, in: 0...300))
                    case "jwks_cache_seconds":
                        configuration.oauth.jwksCacheSeconds = Int64(try reader.int(oauthValue, name, in: 0...86_400))
                    case "issuer": configuration.oauthIssuer = try reader.string(oauthValue, name)
                    default: configuration.jwksCAFile = try reader.string(oauthValue, name)
                    }
                }
            case "persistence":
                // `persistence: off` (or on), or a mapping of its settings.
                if case .mapping = value {
                    try configuration.persistence.set(from: value, reader: reader)
                } else {
                    configuration.persistence.enabled = try reader.bool(value, key)
                }
            case "data_dir": configuration.dataDirectory = try reader.string(value, key)
            case "allow_anonymous": configuration.allowAnonymous = try reader.bool(value, key)
            case "log_level":
                let level = try reader.string(value, key)
                guard logLevels.contains(level) else {
                    throw reader.error(at: value, "'log_level' must be one of \(logLevels.joined(separator: ", "))")
                }
                configuration.logLevel = level
            case "log_format":
                let format = try reader.string(value, key)
                guard logFormats.contains(format) else {
                    throw reader.error(at: value, "'log_format' must be text or json")
                }
                configuration.logFormat = format
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
                        configuration.authentication.methods = try reader.choices(
                            authenticationValue, name, from: Authentication.allMethods, kind: "a method")
                    case "enhanced_methods":
                        configuration.authentication.enhancedMethods = try reader.choices(
                            authenticationValue, name, from: Authentication.allEnhancedMethods,
                            kind: "an enhanced method")
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

extension ServerConfiguration.Persistence {
    fileprivate mutating func set(from node: Node, reader: NodeReader) throws(ConfigurationError) {
        for (keyNode, value) in try reader.mapping(node, "'persistence'") {
            let name = try reader.key(
                keyNode, allowed: ServerConfiguration.persistenceKeys, section: "persistence")
            switch name {
            case "enabled": enabled = try reader.bool(value, name)
            case "file": file = try reader.string(value, name)
            case "durability":
                let choice = try reader.string(value, name)
                guard Self.durabilities.contains(choice) else {
                    throw reader.error(at: value, "'durability' must be normal or full")
                }
                durability = choice
            case "commit_interval_us": commitIntervalMicroseconds = try reader.int(value, name, in: 0...1_000_000)
            default: maximumStoredBytes = try reader.int(value, name, in: 0...(1 << 50))
            }
        }
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
        case "max_connections": maxConnections = try reader.int(node, name, in: 0...10_000_000)
        case "max_connections_per_identity":
            maxConnectionsPerIdentity = try reader.int(node, name, in: 0...10_000_000)
        case "max_pending_connects": maxPendingConnects = try reader.int(node, name, in: 0...10_000_000)
        case "max_publish_rate": maxPublishRate = try reader.int(node, name, in: 0...10_000_000)
        case "max_publish_bytes_rate": maxPublishBytesRate = try reader.int(node, name, in: 0...1_000_000_000)
        case "max_queued_bytes": maxQueuedBytes = try reader.int(node, name, in: 0...Int.max)
        default: maxSubscriptionsPerClient = try reader.int(node, name, in: 1...10_000_000)
        }
    }
}

/// Typed reads from YAML nodes, each failure an error at the node's line.
private struct NodeReader {
    let file: String

    private static let listenerKeys = ["url", "tls", "max_connections"]
    private static let tlsKeys = ["certificate", "key", "key_password", "client_ca", "crl", "client_certificates"]

    enum AnyListener {
        case mqtt(ServerConfiguration.ListenerOptions)
        case http(ServerConfiguration.HTTPListenerOptions)
    }

    /// A listener: a URL, or a mapping with `url` and `tls`; http:// and https:// ones are the HTTP side's.
    func listener(_ node: Node) throws(ConfigurationError) -> AnyListener {
        if let urlNode = urlNode(node) {
            let text = try string(urlNode, "a listener")
            let parsed: ServerConfiguration.HTTPListenerOptions?
            do { parsed = try ServerConfiguration.HTTPListenerOptions.parse(text) } catch {
                throw self.error(at: urlNode, error.description)
            }
            if var http = parsed {
                if case .mapping = node, case .mqtt(let options) = try mqttListener(node, httpURL: true) {
                    guard http.secure || options.tls == ServerConfiguration.TLSOptions() else {
                        throw self.error(at: node, "'tls' belongs to https:// listeners, not http://")
                    }
                    http.tls = options.tls
                }
                return .http(http)
            }
        }
        return try mqttListener(node, httpURL: false)
    }

    /// The node holding a listener's URL: the scalar itself or its `url` key.
    private func urlNode(_ node: Node) -> Node? {
        if case .scalar = node { return node }
        guard case .mapping(let mapping) = node else { return nil }
        return mapping.first { $0.key.string == "url" }?.value
    }

    private func mqttListener(_ node: Node, httpURL: Bool) throws(ConfigurationError) -> AnyListener {
        if case .scalar = node { return .mqtt(ServerConfiguration.ListenerOptions(address: try address(node))) }
        var address: ListenAddress?
        var tls = ServerConfiguration.TLSOptions()
        var tlsNode: Node?
        var maxConnections = 0
        for (keyNode, value) in try mapping(node, "a listener") {
            switch try key(keyNode, allowed: Self.listenerKeys, section: "listeners") {
            case "url":
                // An HTTP listener's URL was read by the caller; this reads only its `tls`.
                address = httpURL ? ListenAddress(kind: .tls, host: "-", port: 0) : try self.address(value)
            case "max_connections":
                guard !httpURL else { throw error(at: keyNode, "'max_connections' belongs to MQTT listeners") }
                maxConnections = try int(value, "max_connections", in: 0...10_000_000)
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
        return .mqtt(ServerConfiguration.ListenerOptions(address: address, tls: tls, maxConnections: maxConnections))
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

    /// A list of distinct names, each one of `allowed`.
    func choices(_ node: Node, _ key: String, from allowed: [String], kind: String) throws(ConfigurationError)
        -> [String]
    {
        var chosen: [String] = []
        for item in try sequence(node, key) {
            let name = try string(item, kind)
            guard allowed.contains(name), !chosen.contains(name) else {
                throw error(
                    at: item,
                    "'\(name)' is not \(kind), or is listed twice; '\(key)' takes "
                        + allowed.joined(separator: ", "))
            }
            chosen.append(name)
        }
        return chosen
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

extension Node {
    /// `node` (a mapping, or nil for an empty one) with the key at `path` set to `value`,
    /// replacing what was there and making the mappings on the way.
    fileprivate static func setting(_ path: ArraySlice<String>, to value: Node, in node: Node?) -> Node {
        guard let key = path.first else { return value }
        var pairs: [(Node, Node)] = []
        if case .mapping(let mapping) = node { pairs = mapping.map { ($0.key, $0.value) } }
        if let index = pairs.firstIndex(where: { $0.0.string == key }) {
            pairs[index].1 = setting(path.dropFirst(), to: value, in: pairs[index].1)
        } else {
            pairs.append((Node(key), setting(path.dropFirst(), to: value, in: nil)))
        }
        return Node(pairs)
    }
}
