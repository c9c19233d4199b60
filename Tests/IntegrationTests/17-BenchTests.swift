import Foundation
import Testing

/// `gatehouse bench` against the real broker: its counts agree with the broker's own
/// metrics, it speaks TLS with token passwords, measures latency across processes, and fails
/// with a non-zero exit when the broker refuses it.
@Suite("17 gatehouse bench", .serialized)
struct BenchCommandTests {
    private func bench(_ arguments: [String], timeout: Duration = .seconds(60)) async throws -> (
        SplitResult, [String: Any]
    ) {
        let result = try await runGatehouse(["bench"] + arguments + ["--json"], timeout: timeout)
        let object = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        return (result, object ?? [:])
    }

    private func metric(_ name: String, http: Int) async throws -> Double? {
        let metrics = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/metrics"])
        let line = metrics.output.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test("pubsub QoS 1: every message delivered once, and the broker counted as many as bench sent")
    func pubsubAgreesWithBrokerMetrics() async throws {
        let (broker, directory) = try BrokerProcess.withHTTPSide()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        let mqtt = try #require(broker.ports["mqtt"])
        let http = try #require(broker.ports["http"])
        let (result, summary) = try await bench([
            "pubsub", "-p", String(mqtt), "-c", "5", "--subscribers", "2", "-q", "1", "-L", "200", "-d", "30",
        ])
        #expect(result.status == 0, "\(result.standardOutput)\n\(result.standardError)\n\(broker.log)")
        #expect(summary["total_published"] as? Int == 1000)
        #expect(summary["acknowledged"] as? Int == 1000)
        #expect(summary["total_received"] as? Int == 2000)
        #expect(summary["lost"] as? Int == 0)
        let latency = try #require(summary["latency_ms"] as? [String: [String: Double]])
        let delivery = try #require(latency["delivery"])
        #expect(delivery["count"] == 2000)
        #expect((delivery["p50"] ?? 0) > 0 && (delivery["p50"] ?? 0) <= (delivery["p99"] ?? 0))
        #expect(try await metric("gatehouse_messages_received_total", http: http) == 1000)
        #expect(try await metric("gatehouse_messages_sent_total", http: http) == 2000)
        // The progress lines went to standard error, a second apart.
        #expect(result.standardError.contains("connected 7 of 7 clients"), "\(result.standardError)")
        #expect(try await broker.stop() == 0)
    }

    @Test("sub and pub in two processes: the subscriber measures the publisher's latency from the payload")
    func latencyAcrossProcesses() async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous", "--sys-interval", "0"])
        try await broker.waitUntilListening()
        let port = String(broker.port)
        let subscriber = try RunningTool(
            BrokerProcess.binary.path,
            ["bench", "sub", "-p", port, "-c", "2", "-t", "fleet/#", "-q", "1", "-L", "300", "-d", "0", "--json"])
        try await subscriber.waitForOutput("connected 2 of 2 clients")
        let (published, _) = try await bench([
            "pub", "-p", port, "-c", "3", "-t", "fleet/%i/telemetry", "-q", "1", "-L", "100", "-r", "2000", "-V", "4",
        ])
        #expect(published.status == 0, "\(published.standardOutput)\n\(published.standardError)")
        #expect(try await subscriber.waitForExit(timeout: .seconds(30)) == 0, "\(subscriber.output)")
        let json = try #require(subscriber.output.split(separator: "\n").first { $0.hasPrefix("{") })
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(summary["total_received"] as? Int == 600)
        let latency = try #require(summary["latency_ms"] as? [String: [String: Double]])
        #expect(latency["delivery"]?["count"] == 600)
        #expect((latency["delivery"]?["max"] ?? 0) < 10_000)
        #expect(try await broker.stop() == 0)
    }

    @Test("MQTTS with token passwords: accepted with the token, a wrong one fails the run with exit 1")
    func tlsAndTokens() async throws {
        let broker = try BrokerProcess(
            arguments: ["--acl", devicesMayUseEverything, "--sys-interval", "0"], listeners: ["mqtts://127.0.0.1:0"])
        try await broker.waitUntilListening()
        try await iam(broker, ["tenant", "add", "acme"])
        try await iam(
            broker, ["identity", "add", "loader", "--tenant", "acme", "--kind", "device", "--role", "device"])
        let token = try await iam(broker, ["token", "create", "loader"])
        let port = String(try #require(broker.ports["mqtts"]))
        let cafile = "\(broker.certificatesDirectory)/ca.pem"
        let common = ["-p", port, "--tls", "--cafile", cafile, "-u", "loader", "-c", "2", "-q", "1", "-L", "50"]

        let (accepted, summary) = try await bench(["pub"] + common + ["-P", token])
        #expect(accepted.status == 0, "\(accepted.standardOutput)\n\(accepted.standardError)\n\(broker.log)")
        #expect(summary["acknowledged"] as? Int == 100)

        let (refused, refusal) = try await bench(["pub"] + common + ["-P", "gth_wrong"])
        #expect(refused.status == 1)
        #expect(refusal["clients"] as? Int == 0)
        #expect(refusal["problems"] as? [String] == ["2 clients did not connect"])
        let errors = try #require(refusal["errors"] as? [String: Int])
        #expect(errors.keys.contains { $0.hasPrefix("CONNACK") }, "\(errors)")

        // Without the CA the handshake fails: counted, not hung.
        let (untrusted, _) = try await bench(["conn", "-p", port, "--tls", "-c", "1", "-d", "1"])
        #expect(untrusted.status == 1, "\(untrusted.standardOutput)")
        #expect(try await broker.stop() == 0)
    }

    @Test("--bind spreads the clients over the given loopback source addresses")
    func sourceAddresses() async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous", "--sys-interval", "0", "--log-level", "debug"])
        try await broker.waitUntilListening()
        let (held, summary) = try await bench([
            "conn", "-p", String(broker.port), "-c", "6", "-d", "1", "--bind", "127.0.0.2,127.0.0.3",
        ])
        #expect(held.status == 0, "\(held.standardOutput)\n\(held.standardError)")
        #expect(summary["clients"] as? Int == 6)
        #expect(try await broker.stop() == 0)
        let connected = broker.log.split(separator: "\n").filter { $0.contains(" connected") }
        #expect(connected.filter { $0.contains("127.0.0.2") }.count == 3, "\(connected)")
        #expect(connected.filter { $0.contains("127.0.0.3") }.count == 3, "\(connected)")
        let wrong = try await runGatehouse(["bench", "conn", "-c", "1", "--bind", "localhost"])
        #expect(wrong.status != 0 && wrong.standardError.contains("--bind"))
    }

    @Test("conn holds its connections; bad options exit non-zero naming the option")
    func connAndBadOptions() async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous", "--sys-interval", "0"])
        try await broker.waitUntilListening()
        let (held, summary) = try await bench(["conn", "-p", String(broker.port), "-c", "200", "-d", "1"])
        #expect(held.status == 0, "\(held.standardOutput)\n\(held.standardError)")
        #expect(summary["clients"] as? Int == 200)
        #expect(try await broker.stop() == 0)

        for (arguments, message) in [
            (["pub", "--size", "8"], "--size"), (["pub", "-q", "3"], "--qos"), (["pub", "-t", "a/+"], "--topic"),
            (["sub", "-V", "6"], "-V"),
        ] {
            let result = try await runGatehouse(["bench"] + arguments)
            #expect(
                result.status != 0 && result.standardError.contains(message), "\(arguments): \(result.standardError)")
        }
        // Nothing listening: a connection failure, exit 1.
        let (nobody, _) = try await bench(["conn", "-p", "1", "-c", "1", "-d", "1"])
        #expect(nobody.status == 1)
    }
}
