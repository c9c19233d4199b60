import GatehouseBroker
import GatehouseConfig
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
            data_dir: /var/lib/gatehouse
            allow_anonymous: true
            log_level: debug
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
            configuration.listeners == [
                ListenAddress(host: "0.0.0.0", port: 1883), ListenAddress(host: "::1", port: 1884),
            ])
        #expect(configuration.dataDirectory == "/var/lib/gatehouse")
        #expect(configuration.allowAnonymous && configuration.logLevel == "debug" && configuration.sysInterval == 30)
        let limits = configuration.limits
        #expect(limits.maxPacketSize == 65_536 && limits.connectTimeout == 5 && limits.maxInflightMessages == 50)
        #expect(limits.maxQueuedMessages == 5_000 && limits.receiveMaximum == 200 && limits.topicAliasMaximum == 0)
        #expect(limits.maxTopicLevels == 16 && limits.maxSubscriptionsPerClient == 100 && limits.maxKeepAlive == 300)
        let broker = configuration.brokerConfiguration
        #expect(broker.receiveMaximum == 200 && broker.maximumSubscriptionsPerClient == 100)
        #expect(broker.maximumKeepAlive == 300)
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
            ("listeners: mqtt://x:1", "g.yaml:1:12: 'listeners' must be a list"),
            ("listeners:\n  - mqtts://x:8883", "g.yaml:2:5: listener scheme 'mqtts' is not supported yet"),
            ("listeners: []", "g.yaml:1:12: 'listeners' needs at least one URL"),
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
