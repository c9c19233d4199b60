import Foundation
import Testing

/// The topic ACL on the wire, its reload with SIGHUP, and the operator's `gatehouse acl` tools.
@Suite("08 topic ACL", .serialized)
struct ACLTests {
    private static let rules = """
        default deny
        role device
          allow publish   tenants/%t/devices/%c/telemetry/#
          allow subscribe tenants/%t/devices/%c/commands/+

        """

    /// A broker with `rules` in a file of its own, and a device `sensor-1` in tenant `acme`.
    private func start(configuration: String? = nil) async throws -> (BrokerProcess, String, token: String) {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("acl-\(UUID()).acl").path
        try Self.rules.write(toFile: file, atomically: true, encoding: .utf8)
        var arguments = ["--acl", file]
        if let configuration {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("acl-\(UUID()).yaml").path
            try configuration.write(toFile: path, atomically: true, encoding: .utf8)
            arguments += ["--config", path]
        }
        let broker = try BrokerProcess(arguments: arguments)
        try await broker.waitUntilListening()
        let dataDir = broker.dataDirectory.path
        for arguments in [
            ["tenant", "add", "acme"],
            ["identity", "add", "sensor-1", "--tenant", "acme", "--kind", "device", "--role", "device"],
        ] {
            #expect(try await runGatehouse(["iam"] + arguments + ["--data-dir", dataDir]).status == 0)
        }
        let token = try await runGatehouse(["iam", "token", "create", "sensor-1", "--data-dir", dataDir])
        return (broker, file, token.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private func adminToken(_ broker: BrokerProcess) throws -> String {
        try String(contentsOfFile: broker.dataDirectory.appendingPathComponent("admin.token").path, encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func device(_ port: Int, _ token: String, _ arguments: [String]) -> [String] {
        ["-p", String(port), "-u", "sensor-1", "-P", token, "-i", "sensor-1", "-d"] + arguments
    }

    @Test(
        "allowed topics work; a refused SUBSCRIBE gets 0x80 (3.1.1) or 0x87 (5.0), a refused QoS 1 PUBLISH 0x87 in 5.0")
    func enforcement() async throws {
        let (broker, _, token) = try await start()
        let port = broker.port
        let allowed = try await runTool(
            "mosquitto_pub",
            device(port, token, ["-t", "tenants/acme/devices/sensor-1/telemetry/t", "-m", "1", "-q", "1"]))
        #expect(allowed.output.contains("received PUBACK (Mid: 1, RC:0)"), "\(allowed.output)")
        let refused = try await runTool(
            "mosquitto_pub",
            device(
                port, token, ["-V", "mqttv5", "-t", "tenants/acme/devices/sensor-2/telemetry/t", "-m", "1", "-q", "1"]))
        #expect(refused.output.contains("RC:135"), "\(refused.output)")
        for (version, code) in [("mqttv311", "128"), ("mqttv5", "135")] {
            let subscribe = try await runTool(
                "mosquitto_sub", device(port, token, ["-V", version, "-t", "tenants/acme/#", "-W", "2"]))
            #expect(subscribe.output.contains("Subscribed (mid: 1): \(code)"), "\(subscribe.output)")
        }
        #expect(try await broker.stop() == 0)
    }

    @Test("acl_refused_publish: disconnect ends the connection of a client that publishes where it may not")
    func disconnectOnRefusal() async throws {
        let (broker, _, token) = try await start(configuration: "acl_refused_publish: disconnect\n")
        let refused = try await runTool(
            "mosquitto_pub",
            device(broker.port, token, ["-V", "mqttv5", "-t", "tenants/acme/elsewhere", "-m", "1", "-q", "1"]))
        #expect(refused.output.contains("Received DISCONNECT (135)") || refused.status != 0, "\(refused.output)")
        #expect(!refused.output.contains("received PUBACK"), "\(refused.output)")
        // It was the publish, not the login, that ended the connection.
        #expect(refused.output.contains("received CONNACK (0)"), "\(refused.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("SIGHUP applies a valid file at once; a broken one is refused with its line and the old ACL stays")
    func reload() async throws {
        let (broker, file, token) = try await start()
        let port = broker.port
        let other = ["-t", "tenants/acme/shared/news", "-m", "1", "-q", "1", "-V", "mqttv5"]
        #expect(try await runTool("mosquitto_pub", device(port, token, other)).output.contains("RC:135"))

        try (Self.rules + "  allow publish tenants/%t/shared/#\n").write(
            toFile: file, atomically: true, encoding: .utf8)
        let reload = try await runGatehouse(["acl", "reload", "--data-dir", broker.dataDirectory.path])
        #expect(reload.status == 0, "\(reload.standardError)")
        try await broker.waitForLog("ACL reloaded")
        let afterReload = try await runTool("mosquitto_pub", device(port, token, other))
        // Accepted: 0x10 "no matching subscribers" in 5.0, never 0x87.
        #expect(afterReload.output.contains("RC:16"), "\(afterReload.output)")

        try (Self.rules + "  allow publish tenants/%t/shared/#\n  allow shout x\n").write(
            toFile: file, atomically: true, encoding: .utf8)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("ACL reload refused; the previous ACL stays in force")
        #expect(broker.log.contains("ACL error: \(file):6:9: expected publish, subscribe, read or all"))
        let afterRefusal = try await runTool("mosquitto_pub", device(port, token, other))
        #expect(afterRefusal.output.contains("RC:16"), "\(afterRefusal.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("a reload that withdraws a live subscription removes it: nothing more is delivered to it")
    func reloadWithdrawsSubscription() async throws {
        let (broker, file, token) = try await start()
        let port = broker.port
        let dataDir = broker.dataDirectory.path
        try (Self.rules + "role operator\n  allow publish tenants/%t/devices/+/commands/+\n").write(
            toFile: file, atomically: true, encoding: .utf8)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("rules=3")
        _ = try await runGatehouse(
            [
                "iam", "identity", "add", "op", "--tenant", "acme", "--kind", "user", "--role", "operator",
                "--data-dir", dataDir,
            ])
        let operatorToken = try await runGatehouse(["iam", "token", "create", "op", "--data-dir", dataDir])
            .standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let command = { (message: String) in
            try await runTool(
                "mosquitto_pub",
                [
                    "-p", String(port), "-u", "op", "-P", operatorToken, "-V", "mqttv5", "-d", "-q", "1",
                    "-t", "tenants/acme/devices/sensor-1/commands/reboot", "-m", message,
                ])
        }
        let subscriber = try RunningTool(
            "mosquitto_sub", device(port, token, ["-t", "tenants/acme/devices/sensor-1/commands/+", "-v"]))
        try await subscriber.waitForOutput("received SUBACK")
        #expect(try await command("first").status == 0)
        try await subscriber.waitForOutput("commands/reboot first")

        // The device may no longer subscribe to its commands.
        try "default deny\nrole operator\n  allow publish tenants/%t/devices/+/commands/+\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("subscriptions_removed=1")
        try await broker.waitForLog("subscription removed: the reloaded ACL no longer allows it")
        let second = try await command("second")
        #expect(second.output.contains("RC:16"), "\(second.output)")  // no matching subscribers any more
        try await Task.sleep(for: .milliseconds(300))
        #expect(!subscriber.output.contains("second"))
        #expect(try await broker.stop() == 0)
    }

    @Test(
        "reload under load: QoS 1 traffic keeps flowing while the file flips between allow and deny and a broken one is tried"
    )
    func reloadUnderLoad() async throws {
        let (broker, file, token) = try await start(configuration: "sys_interval: 1\n")
        let base =
            "default deny\nrole admin\n  allow subscribe $SYS/#\n"
            + "role device\n  allow subscribe tenants/%t/#\n  allow publish tenants/%t/a\n"
        let allowB = base + "  allow publish tenants/%t/b\n"
        let broken = allowB + "  allow publish tenants/%t/b/#/x\n"
        try allowB.write(toFile: file, atomically: true, encoding: .utf8)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("rules=4")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Clients/acl_under_load.py").path
        let load = try RunningTool("python3", [script, String(broker.port), "sensor-1", token, "4"])
        for text in [base, allowB, broken, base, broken, allowB, base] {
            try await Task.sleep(for: .milliseconds(450))
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            kill(broker.process.processIdentifier, SIGHUP)
        }
        #expect(try await load.waitForExit(timeout: .seconds(30)) == 0, "\(load.output)")
        #expect(load.output.contains("ok A="), "\(load.output)")
        let counts = load.output.firstMatch(of: /B_accepted=(\d+) B_refused=(\d+)/)
        #expect((counts.flatMap { Int($0.1) } ?? 0) > 0 && (counts.flatMap { Int($0.2) } ?? 0) > 0, "\(load.output)")
        #expect(broker.log.components(separatedBy: "ACL reload refused").count == 3)  // both broken files
        let counters = try RunningTool(
            "mosquitto_sub",
            ["-p", String(broker.port), "-u", "admin", "-P", try adminToken(broker), "-t", "$SYS/broker/acl/#", "-v"])
        try await counters.waitForOutput("$SYS/broker/acl/reload-failures 2", timeout: .seconds(5))
        #expect(try await broker.stop() == 0)
    }

    @Test("acl lint lists every error and exits 1; acl check prints the decision and the deciding rule")
    func tools() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("acl-tools-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let good = "\(directory)/good.acl"
        let bad = "\(directory)/bad.acl"
        try Self.rules.write(toFile: good, atomically: true, encoding: .utf8)
        try "default deny\nrole r\n  allow shout a\n  deny publish a/#/b\n".write(
            toFile: bad, atomically: true, encoding: .utf8)

        let clean = try await runGatehouse(["acl", "lint", good])
        #expect(clean.status == 0 && clean.standardOutput.contains("ok, 2 rules"))
        let broken = try await runGatehouse(["acl", "lint", bad])
        #expect(broken.status == 1)
        #expect(broken.standardOutput.contains("\(bad):3:9:") && broken.standardOutput.contains("\(bad):4:16:"))

        let accept = try await runGatehouse([
            "acl", "check", good, "--role", "device", "--tenant", "acme", "--client", "s1", "publish",
            "tenants/acme/devices/s1/telemetry/t",
        ])
        #expect(accept.status == 0 && accept.standardOutput.contains("accept"))
        #expect(accept.standardOutput.contains("\(good):3: allow publish tenants/%t/devices/%c/telemetry/#"))
        let reject = try await runGatehouse([
            "acl", "check", good, "--role", "device", "--tenant", "acme", "--client", "s1", "subscribe",
            "tenants/acme/#",
        ])
        #expect(reject.status == 1 && reject.standardOutput.contains("reject"))
    }
}
