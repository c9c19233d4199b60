import Foundation
import Testing

/// `GET /metrics` through swift-prometheus, read by Python's prometheus_client parser with
/// paho-mqtt traffic to check the counters against.
@Suite("15 metrics", .serialized)
struct MetricsTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/metrics_check.py").path

    private func startBroker(_ http: String = "", environment: [String: String] = [:]) throws -> (BrokerProcess, URL) {
        try BrokerProcess.withHTTPSide(environment: environment) { _ in http }
    }

    private func run(_ mode: String, _ broker: BrokerProcess) async throws {
        let mqtt = try #require(broker.ports["mqtt"])
        let http = try #require(broker.ports["http"])
        let result = try await runTool(
            "python3", [Self.script, mode, String(http), String(mqtt), broker.dataDirectory.path],
            timeout: .seconds(60))
        #expect(result.status == 0 && result.output.contains("done"), "\(result.output)\nbroker log:\n\(broker.log)")
    }

    @Test("counters, gauges and the commit histogram match the traffic; ACL reloads are counted")
    func countersMatchTraffic() async throws {
        let (broker, directory) = try startBroker()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        try await run("open", broker)

        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("ACL reloaded")
        let http = try #require(broker.ports["http"])
        let metrics = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/metrics"])
        #expect(metrics.output.contains("gatehouse_acl_reloads_total{result=\"ok\"} 1"), "\(metrics.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("limits.max_connections: mosquitto_pub is refused with Quota exceeded while mosquitto_sub holds the slot")
    func connectionLimitRefusal() async throws {
        let (broker, directory) = try startBroker(environment: ["GATEHOUSE_LIMITS__MAX_CONNECTIONS": "1"])
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        let port = String(try #require(broker.ports["mqtt"]))
        let holder = try RunningTool("mosquitto_sub", ["-p", port, "-V", "mqttv5", "-t", "held", "-d"])
        try await holder.waitForOutput("received SUBACK")
        let refused = try await runTool("mosquitto_pub", ["-p", port, "-V", "mqttv5", "-t", "a", "-m", "b"])
        #expect(refused.status != 0 && refused.output.contains("Quota exceeded"), "\(refused.output)")
        let http = try #require(broker.ports["http"])
        let metrics = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/metrics"])
        #expect(
            metrics.output.contains("gatehouse_connections_refused_total{reason=\"max_connections\"} 1"),
            "\(metrics.output)")
        holder.kill(SIGKILL)
        #expect(try await broker.stop() == 0)
    }

    @Test("a listener's own max_connections: its second client gets Quota exceeded while another listener accepts")
    func listenerConnectionLimit() async throws {
        let (broker, directory) = try BrokerProcess.withHTTPSide(mqttListeners: [
            "{url: \"mqtt://127.0.0.1:0\", max_connections: 1}", "mqtt://127.0.0.1:0",
        ])
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        // The MQTT listeners bind in the order declared.
        let mqttPorts = broker.log.matches(of: /listening on mqtt:\/\/127\.0\.0\.1:(\d+)/).map { String($0.1) }
        try #require(mqttPorts.count == 2, "\(broker.log)")
        let holder = try RunningTool("mosquitto_sub", ["-p", mqttPorts[0], "-V", "mqttv5", "-t", "held", "-d"])
        try await holder.waitForOutput("received SUBACK")
        let refused = try await runTool("mosquitto_pub", ["-p", mqttPorts[0], "-V", "mqttv5", "-t", "a", "-m", "b"])
        #expect(refused.status != 0 && refused.output.contains("Quota exceeded"), "\(refused.output)")
        let accepted = try await runTool("mosquitto_pub", ["-p", mqttPorts[1], "-V", "mqttv5", "-t", "a", "-m", "b"])
        #expect(accepted.status == 0, "\(accepted.output)")
        let http = try #require(broker.ports["http"])
        let metrics = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/metrics"])
        #expect(
            metrics.output.contains("gatehouse_connections_refused_total{reason=\"max_connections_per_listener\"} 1"),
            "\(metrics.output)")
        #expect(
            metrics.output.contains(
                "gatehouse_connections_by_listener{listener=\"mqtt://127.0.0.1:\(mqttPorts[0])\"} 1"),
            "\(metrics.output)")
        holder.kill(SIGKILL)
        #expect(try await broker.stop() == 0)
    }

    @Test("10,000 silent sockets: a real client still connects within 1 s; the oldest past the limit are closed")
    func silentSockets() async throws {
        let (broker, directory) = try startBroker(environment: ["GATEHOUSE_LIMITS__MAX_PENDING_CONNECTS": "2000"])
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        let script = URL(fileURLWithPath: Self.script).deletingLastPathComponent()
            .appendingPathComponent("silent_sockets.py").path
        let port = String(try #require(broker.ports["mqtt"]))
        let result = try await runTool("python3", [script, port, "10000", "2000"], timeout: .seconds(120))
        #expect(result.status == 0 && result.output.contains("done"), "\(result.output)")
        let http = try #require(broker.ports["http"])
        let metrics = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/metrics"])
        #expect(metrics.output.contains("gatehouse_connections_refused_total{reason=\"max_pending_connects\"}"))
        #expect(try await broker.stop() == 0)
    }

    @Test("with http.metrics_require_token even loopback needs an admin token (401 and a problem body without)")
    func tokenRequired() async throws {
        let (broker, directory) = try startBroker("http:\n  metrics_require_token: true")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        try await run("token", broker)
        #expect(try await broker.stop() == 0)
    }
}
