import Foundation
import GatehouseBroker
import GatehouseConfig
import GatehouseHTTP
import GatehouseIAM
import GatehouseTransport
import Testing

@Suite("configuration file")
struct ServerConfigurationTests {
    @Test("every key is read")
    func everyKey() throws {
        let text = """
            # Gatehouse
            listeners:
              - mqtt://0.0.0.0:1883
              - mqtt://[::1]:1884
              - wss://0.0.0.0:8884
              - url: mqtts://0.0.0.0:8883
                max_connections: 5000
                tls:
                  certificate: /etc/gatehouse/server.pem
                  key: /etc/gatehouse/server.key
                  key_password: s3cret
                  client_ca: /etc/gatehouse/devices-ca.pem
                  crl: /etc/gatehouse/devices.crl
                  client_certificates: required
            data_dir: /var/lib/gatehouse
            allow_anonymous: true
            log_level: debug
            log_format: json
            sys_interval: 30
            limits:
              max_packet_size: 65536
              connect_timeout: 5
              max_inflight_messages: 50
              max_queued_messages: 5000
              receive_maximum: 200
              topic_alias_maximum: 0
              max_topic_levels: 16
              max_subscriptions_per_client: 100
              max_keep_alive: 300
            """
        let configuration = try ServerConfiguration.parse(text, file: "g.yaml")
        #expect(
            configuration.listeners.map(\.address) == [
                ListenAddress(host: "0.0.0.0", port: 1883), ListenAddress(host: "::1", port: 1884),
                ListenAddress(kind: .wss, host: "0.0.0.0", port: 8884, path: "/mqtt"),
                ListenAddress(kind: .tls, host: "0.0.0.0", port: 8883),
            ])
        #expect(configuration.listeners.map(\.maxConnections) == [0, 0, 0, 5000])
        #expect(configuration.dataDirectory == "/var/lib/gatehouse")
        let resolved = configuration.resolvedListeners()
        #expect(resolved.listeners.map(\.maximumConnections) == [0, 0, 0, 5000])
        #expect(resolved.usesDevelopmentCertificates)  // the wss listener names no files
        // Both ask for client certificates, so both also trust the enrollment CA (the development CA here).
        var development = TLSSettings(
            certificateFile: "/var/lib/gatehouse/certs/server.pem",
            keyFile: "/var/lib/gatehouse/certs/server.key", clientCAFile: "/var/lib/gatehouse/certs/ca.pem",
            clientCertificates: .optional)
        development.additionalClientCAFiles = ["/var/lib/gatehouse/certs/ca.pem"]
        #expect(resolved.listeners[2].tls == development)
        var configured = TLSSettings(
            certificateFile: "/etc/gatehouse/server.pem", keyFile: "/etc/gatehouse/server.key",
            keyPassword: "s3cret", clientCAFile: "/etc/gatehouse/devices-ca.pem",
            crlFile: "/etc/gatehouse/devices.crl", clientCertificates: .required)
        configured.additionalClientCAFiles = ["/var/lib/gatehouse/certs/ca.pem"]
        #expect(resolved.listeners[3].tls == configured)
        #expect(resolved.listeners[0].tls == nil)
        #expect(configuration.allowAnonymous && configuration.logLevel == "debug" && configuration.sysInterval == 30)
        #expect(configuration.logFormat == "json")
        let limits = configuration.limits
        #expect(limits.maxPacketSize == 65_536 && limits.connectTimeout == 5 && limits.maxInflightMessages == 50)
        #expect(limits.maxQueuedMessages == 5_000 && limits.receiveMaximum == 200 && limits.topicAliasMaximum == 0)
        #expect(limits.maxTopicLevels == 16 && limits.maxSubscriptionsPerClient == 100 && limits.maxKeepAlive == 300)
        let broker = configuration.brokerConfiguration
        #expect(broker.receiveMaximum == 200 && broker.maximumSubscriptionsPerClient == 100)
        #expect(broker.maximumKeepAlive == 300)
    }

    @Test("own certificate files without a client CA ask for no client certificate")
    func ownCertificateWithoutClientCA() throws {
        let text = "listeners:\n  - url: mqtts://0.0.0.0:8883\n    tls: {certificate: s.pem, key: s.key}\n"
        let resolved = try ServerConfiguration.parse(text, file: "g.yaml").resolvedListeners()
        #expect(!resolved.usesDevelopmentCertificates)
        #expect(resolved.listeners[0].tls?.clientCertificates == TLSSettings.ClientCertificates.none)
    }

    @Test("authentication methods, their order, the back-off and the identity store's path")
    func authentication() throws {
        let text = """
            iam_database: /var/lib/gatehouse/identities.sqlite
            authentication:
              methods: [token, password]
              backoff_base_ms: 0
              backoff_max_ms: 1000
            """
        let configuration = try ServerConfiguration.parse(text, file: "g.yaml")
        #expect(configuration.iamDatabase == "/var/lib/gatehouse/identities.sqlite")
        #expect(!configuration.brokerConfiguration.disconnectOnRefusedPublish)
        var strict = configuration
        strict.refusedPublish = "disconnect"
        #expect(strict.brokerConfiguration.disconnectOnRefusedPublish)
        #expect(configuration.authentication.methods == ["token", "password"])
        #expect(configuration.authentication.backoffBaseMilliseconds == 0)
        #expect(configuration.authentication.backoffMaximumMilliseconds == 1_000)
        #expect(ServerConfiguration().authentication.methods == ["certificate", "token", "jwt", "password"])
    }

    @Test("the HTTP side: http and https listeners, http, oauth and enrollment keys")
    func httpSide() throws {
        let text = """
            listeners:
              - mqtt://127.0.0.1:1883
              - http://127.0.0.1:8080
              - url: https://0.0.0.0:8443
                tls: {certificate: /etc/g/web.pem, key: /etc/g/web.key}
            http: {public_url: "https://auth.example.com", token_rate_per_client: 5, service_user_token_lifetime: 120}
            oauth: {access_token_lifetime: 60, refresh_retry_window: 2, jwks_ca_file: /etc/g/ca.pem}
            enrollment: {ca_certificate: /etc/g/enroll.pem, ca_key: /etc/g/enroll.key, validity_days: 7}
            """
        let configuration = try ServerConfiguration.parse(text, file: "g.yaml")
        #expect(configuration.listeners.count == 1)
        #expect(configuration.httpListeners.map(\.port) == [8080, 8443])
        #expect(
            configuration.httpListeners[1].secure && configuration.httpListeners[1].tls.certificate == "/etc/g/web.pem")
        #expect(
            configuration.http.publicURL == "https://auth.example.com" && configuration.http.tokenRequestsPerClient == 5
        )
        #expect(configuration.http.serviceUserTokenLifetime == 120)
        #expect(configuration.oauth.accessTokenLifetime == 60 && configuration.oauth.refreshRetryWindow == 2)
        #expect(configuration.jwksCAFile == "/etc/g/ca.pem")
        // Without oauth.issuer the public URL is the issuer identifier (RFC 8414).
        #expect(configuration.issuerIdentifier == "https://auth.example.com")
        #expect(ServerConfiguration().issuerIdentifier == nil)
        #expect(configuration.enrollment.validityDays == 7)
        #expect(configuration.enrollmentAuthorityFiles == ("/etc/g/enroll.pem", "/etc/g/enroll.key", false))
        #expect(ServerConfiguration().httpListeners.map { "\($0.host):\($0.port)" } == ["127.0.0.1:8080"])
        for (bad, message) in [
            ("enrollment: {ca_key: /k}", "g.yaml:1:13: 'enrollment' needs both"),
            ("oauth: {refresh_retry_window: 900}", "g.yaml:1:31: 'refresh_retry_window' must be between 0 and 300"),
            ("listeners: [http://127.0.0.1:8080]", "g.yaml:1:12: 'listeners' needs at least one MQTT listener URL"),
            ("http: {public_url: ftp://x}", "g.yaml:1:20: 'public_url' must be an http:// or https:// URL"),
        ] {
            #expect(throws: ConfigurationError.self) { try ServerConfiguration.parse(bad, file: "g.yaml") }
            do { _ = try ServerConfiguration.parse(bad, file: "g.yaml") } catch {
                #expect(error.description.hasPrefix(message), "\(error.description)")
            }
        }
    }

    @Test("persistence: on by default beside the IAM, 'off' as a scalar, or its settings")
    func persistence() throws {
        let defaults = ServerConfiguration()
        #expect(defaults.persistence.enabled && defaults.persistenceFile == "./data/broker.sqlite")
        #expect(defaults.persistence.commitIntervalMicroseconds == 2_000)
        #expect(try !ServerConfiguration.parse("persistence: off", file: "g.yaml").persistence.enabled)
        let text = """
            data_dir: /var/lib/gatehouse
            persistence: {durability: full, commit_interval_us: 500, file: /srv/broker.db, max_stored_bytes: 4096}
            """
        let configured = try ServerConfiguration.parse(text, file: "g.yaml")
        #expect(configured.persistence.enabled && configured.persistence.durability == "full")
        #expect(configured.brokerConfiguration.maximumStoredBytes == 4_096)
        #expect(
            configured.persistence.commitIntervalMicroseconds == 500 && configured.persistenceFile == "/srv/broker.db")
        for (bad, message) in [
            ("persistence: {durability: sometimes}", "g.yaml:1:27: 'durability' must be normal or full"),
            ("persistence: {wal: true}", "g.yaml:1:15: unknown key 'wal' in 'persistence'"),
            ("persistence: maybe", "g.yaml:1:14: 'persistence' must be true or false"),
        ] {
            do {
                _ = try ServerConfiguration.parse(bad, file: "g.yaml")
                Issue.record("accepted \(bad)")
            } catch {
                #expect(error.description.hasPrefix(message), "\(error.description)")
            }
        }
    }

    @Test("GATEHOUSE_ environment variables override the file, level by level, with YAML values")
    func environmentOverrides() throws {
        let file = """
            log_level: debug
            limits:
              max_packet_size: 4096
              max_queued_messages: 50
            """
        let settings = try ServerConfiguration.parse(
            file, file: "g.yaml",
            environment: [
                "GATEHOUSE_LIMITS__MAX_PACKET_SIZE": "65536",
                "GATEHOUSE_LIMITS__MAX_CONNECTIONS_PER_IDENTITY": "4",
                "GATEHOUSE_HTTP__METRICS_REQUIRE_TOKEN": "true",
                "GATEHOUSE_DATA_DIR": "/var/lib/gatehouse",
                "GATEHOUSE_AUTHENTICATION__METHODS": "[token, password]",
                "GATEHOUSE_PERSISTENCE__DURABILITY": "full",
                "GATEHOUSE_LISTENERS": "[mqtt://0.0.0.0:1883, http://0.0.0.0:8080]",
                "GATEHOUSE_BINARY": "/usr/bin/gatehouse",  // not a setting
                "HOME": "/root",
            ])
        #expect(settings.limits.maxPacketSize == 65_536)
        #expect(settings.limits.maxQueuedMessages == 50)
        #expect(settings.brokerConfiguration.maximumConnectionsPerIdentity == 4)
        #expect(settings.http.metricsRequireToken)
        #expect(settings.logLevel == "debug")
        #expect(settings.dataDirectory == "/var/lib/gatehouse")
        #expect(settings.authentication.methods == ["token", "password"])
        #expect(settings.persistence.durability == "full")
        #expect(settings.listeners.map(\.address.port) == [1883])
        #expect(settings.httpListeners.map(\.port) == [8080])
        let withoutFile = try ServerConfiguration.parse(
            nil, file: "the configuration", environment: ["GATEHOUSE_SYS_INTERVAL": "0"])
        #expect(withoutFile.sysInterval == 0 && withoutFile.limits == ServerConfiguration.Limits())
    }

    @Test(
        "a bad environment variable is refused by its name",
        arguments: [
            (
                "GATEHOUSE_LIMITS__MAX_PACKET_SIZE", "10",
                "environment variable GATEHOUSE_LIMITS__MAX_PACKET_SIZE: 'max_packet_size' must be between 64"
            ),
            (
                "GATEHOUSE_LIMITS__MAX_PACKT_SIZE", "100",
                "environment variable GATEHOUSE_LIMITS__MAX_PACKT_SIZE: unknown key 'max_packt_size' in 'limits'"
            ),
            (
                "GATEHOUSE_LIMTS__MAX_PACKET_SIZE", "100",
                "environment variable GATEHOUSE_LIMTS__MAX_PACKET_SIZE: unknown key 'limts'"
            ),
            (
                "GATEHOUSE_ALLOW_ANONYMOUS", "perhaps",
                "environment variable GATEHOUSE_ALLOW_ANONYMOUS: 'allow_anonymous' must be true or false"
            ),
            ("GATEHOUSE_LIMITS__", "1", "environment variable GATEHOUSE_LIMITS__: an empty key"),
        ])
    func environmentMistakes(name: String, value: String, message: String) {
        #expect {
            try ServerConfiguration.parse("", file: "g.yaml", environment: [name: value])
        } throws: { error in
            let description = (error as? ConfigurationError)?.description ?? ""
            if !description.hasPrefix(message) { Issue.record("got: \(description)") }
            return description.hasPrefix(message)
        }
    }

    @Test("the container's configuration (docker/gatehouse.yaml) is valid and listens on every interface")
    func containerConfiguration() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docker/gatehouse.yaml").path
        let settings = try ServerConfiguration.parse(
            try String(contentsOfFile: file, encoding: .utf8), file: file, environment: [:])
        #expect(settings.listeners.map(\.address.host) == ["0.0.0.0", "0.0.0.0", "0.0.0.0"])
        #expect(settings.httpListeners.map(\.host) == ["0.0.0.0"])
        #expect(settings.dataDirectory == "/var/lib/gatehouse" && settings.persistence.enabled)
    }

    @Test("an empty file keeps every default")
    func empty() throws {
        #expect(try ServerConfiguration.parse("", file: "g.yaml") == ServerConfiguration())
        #expect(try ServerConfiguration.parse("# only a comment\n", file: "g.yaml") == ServerConfiguration())
    }

    @Test(
        "each mistake is refused with file:line:column and what was expected",
        arguments: [
            ("allow_anonymus: true", "g.yaml:1:1: unknown key 'allow_anonymus'; expected one of: listeners"),
            ("limits:\n  max_packet_sise: 10", "g.yaml:2:3: unknown key 'max_packet_sise' in 'limits'"),
            (
                "limits:\n  max_packet_size: 10",
                "g.yaml:2:20: 'max_packet_size' must be between 64 and 268435460, not 10"
            ),
            ("sys_interval: often", "g.yaml:1:15: 'sys_interval' must be a whole number"),
            ("allow_anonymous: maybe", "g.yaml:1:18: 'allow_anonymous' must be true or false"),
            ("log_level: loud", "g.yaml:1:12: 'log_level' must be one of trace, debug"),
            ("log_format: xml", "g.yaml:1:13: 'log_format' must be text or json"),
            ("listeners: mqtt://x:1", "g.yaml:1:12: 'listeners' must be a list"),
            (
                "listeners:\n  - mqttx://x:8883",
                "g.yaml:2:5: listener scheme 'mqttx' is not one of mqtt, mqtts, ws, wss"
            ),
            ("listeners:\n  - mqtt://x:1/path", "g.yaml:2:5: listen address 'mqtt://x:1/path' has a path"),
            ("listeners:\n  - url: mqtt://x:1\n    tls: {}", "g.yaml:3:10: 'tls' belongs to mqtts:// and wss://"),
            ("listeners:\n  - tls: {}", "g.yaml:2:5: a listener mapping needs a 'url'"),
            (
                "listeners:\n  - url: wss://x:1\n    tls: {key: k}",
                "g.yaml:3:10: 'tls' needs both 'certificate' and 'key'"
            ),
            (
                "listeners:\n  - url: wss://x:1\n    tls: {client_certificates: always}",
                "g.yaml:3:32: 'client_certificates' must be none, optional or required"
            ),
            ("listeners:\n  - url: wss://x:1\n    tls: {cert: c}", "g.yaml:3:11: unknown key 'cert' in 'tls'"),
            ("listeners: []", "g.yaml:1:12: 'listeners' needs at least one URL"),
            (
                "listeners:\n  - url: mqtt://x:1\n    max_connections: lots",
                "g.yaml:3:22: 'max_connections' must be a whole number"
            ),
            (
                "listeners:\n  - mqtt://x:1\n  - url: http://x:2\n    max_connections: 5",
                "g.yaml:4:5: 'max_connections' belongs to MQTT listeners"
            ),
            ("authentication:\n  methods: [token, ldap]", "g.yaml:2:20: 'ldap' is not a method, or is listed twice"),
            ("authentication:\n  methods: [token, token]", "g.yaml:2:20: 'token' is not a method, or is listed twice"),
            (
                "authentication:\n  enhanced_methods: [SCRAM-SHA-1]",
                "g.yaml:2:22: 'SCRAM-SHA-1' is not an enhanced method, or is listed twice"
            ),
            ("authentication:\n  backoff_max_ms: -1", "g.yaml:2:19: 'backoff_max_ms' must be between 0 and 3600000"),
            ("authentication:\n  order: [token]", "g.yaml:2:3: unknown key 'order' in 'authentication'"),
            ("acl_refused_publish: kick", "g.yaml:1:22: 'acl_refused_publish' must be acknowledge or disconnect"),
            ("- a\n- b", "g.yaml:1:1: the top level must be a mapping of keys"),
            ("limits: 5", "g.yaml:1:9: 'limits' must be a mapping of keys"),
            ("a: [", "g.yaml: not valid YAML"),
        ])
    func mistakes(text: String, message: String) {
        #expect {
            try ServerConfiguration.parse(text, file: "g.yaml")
        } throws: { error in
            let description = (error as? ConfigurationError)?.description ?? ""
            if !description.hasPrefix(message) { Issue.record("got: \(description)") }
            return description.hasPrefix(message)
        }
    }
}
