import Foundation
import Testing

/// The identity store behind CONNECT, driven by the `gatehouse iam` CLI on the broker's own
/// data directory while mosquitto and paho clients are connected.
@Suite("07 identities and credentials", .serialized)
struct IAMTests {
    static let pahoSession = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/paho_session.py").path

    private func startBroker(listeners: [String] = ["mqtt://127.0.0.1:0"]) async throws -> BrokerProcess {
        let broker = try BrokerProcess(arguments: ["--acl", devicesMayUseEverything], listeners: listeners)
        try await broker.waitUntilListening()
        return broker
    }

    /// A device identity in tenant acme with a fresh token.
    private func device(_ broker: BrokerProcess, _ name: String, expires: String? = nil) async throws -> String {
        if !(try await iam(broker, ["tenant", "list"])).contains("acme") {
            try await iam(broker, ["tenant", "add", "acme"])
        }
        try await iam(broker, ["identity", "add", name, "--tenant", "acme", "--kind", "device", "--role", "device"])
        return try await iam(broker, ["token", "create", name] + (expires.map { ["--expires", $0] } ?? []))
    }

    private func publish(_ port: Int, _ arguments: [String], topic: String = "t", message: String = "m") async throws
        -> ToolResult
    {
        try await runTool("mosquitto_pub", ["-p", String(port), "-t", topic, "-m", message, "-q", "1"] + arguments)
    }

    @Test("first start: an admin token in a 0600 file works; no credentials or a wrong token are refused")
    func firstStart() async throws {
        let broker = try await startBroker()
        try await broker.waitForLog("first start: created tenant 'default' and identity 'admin'")
        let tokenFile = broker.dataDirectory.appendingPathComponent("admin.token").path
        let attributes = try FileManager.default.attributesOfItem(atPath: tokenFile)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(
            in: .whitespacesAndNewlines)
        for version in ["mqttv5", "mqttv311"] {
            #expect(try await publish(broker.port, ["-V", version, "-u", "admin", "-P", token]).status == 0)
            let anonymous = try await publish(broker.port, ["-V", version])
            #expect(
                anonymous.status != 0 && anonymous.output.lowercased().contains("not authori"), "\(anonymous.output)")
            let wrong = try await publish(
                broker.port, ["-V", version, "-u", "admin", "-P", "gth_" + String(repeating: "x", count: 43)])
            #expect(
                wrong.status != 0 && wrong.output.lowercased().contains("bad user name or password"), "\(wrong.output)")
        }
        #expect(!broker.log.contains(token))  // secrets never reach the log
        #expect(try await broker.stop() == 0)
    }

    @Test("CLI round trips: the token alone on stdout, listed by hint, errors in one sentence with a non-zero exit")
    func cliRoundTrips() async throws {
        let broker = try await startBroker()
        let token = try await device(broker, "sensor-1", expires: "30d")
        #expect(token.hasPrefix("gth_") && !token.contains("\n"))
        let listed = try await iam(broker, ["token", "list", "sensor-1"])
        #expect(listed.contains(String(token.prefix(10))) && !listed.contains(token))
        let shown = try await iam(broker, ["identity", "show", "sensor-1"])
        #expect(shown.contains("tenant:     acme") && shown.contains("roles:      device"))
        try await iam(broker, ["password", "set", "sensor-1"], input: "a long enough password\n")
        #expect(try await publish(broker.port, ["-u", "sensor-1", "-P", "a long enough password"]).status == 0)
        #expect(try await publish(broker.port, ["-u", "sensor-1", "-P", token]).status == 0)
        #expect(try await iam(broker, ["audit"]).contains("password.set"))

        for (arguments, message) in [
            (
                ["identity", "add", "sensor-1", "--tenant", "acme", "--kind", "device"],
                "identity 'sensor-1' already exists"
            ),
            (["identity", "add", "x", "--tenant", "nowhere", "--kind", "device"], "no tenant named 'nowhere'"),
            (["identity", "add", "x", "--tenant", "acme", "--kind", "robot"], "--kind must be device"),
            (["token", "revoke", "tok_missing"], "no credential 'tok_missing'"),
            (["token", "create", "sensor-1", "--expires", "soon"], "--expires must look like 30d"),
        ] {
            let result = try await runGatehouse(["iam"] + arguments + ["--data-dir", broker.dataDirectory.path])
            #expect(
                result.status != 0 && result.standardError.contains(message), "\(arguments): \(result.standardError)")
        }
        let empty = try await runGatehouse(
            ["iam", "password", "set", "sensor-1", "--data-dir", broker.dataDirectory.path], input: "")
        #expect(empty.status != 0 && empty.standardError.contains("no password on standard input"))
        #expect(try await broker.stop() == 0)
    }

    @Test("failed CONNECTs slow down their source: the next attempt waits, a success clears the record")
    func backoffSlowsFailures() async throws {
        let configuration = FileManager.default.temporaryDirectory.appendingPathComponent("backoff-\(UUID()).yaml")
        try "authentication:\n  backoff_base_ms: 400\n".write(to: configuration, atomically: true, encoding: .utf8)
        let broker = try BrokerProcess(arguments: ["--acl", devicesMayUseEverything, "--config", configuration.path])
        try await broker.waitUntilListening()
        let token = try await device(broker, "sensor-1")
        let wrong = "gth_" + String(repeating: "x", count: 43)
        func timedPublish(_ password: String) async throws -> (status: Int32, elapsed: Duration) {
            let start = ContinuousClock.now
            let result = try await publish(broker.port, ["-u", "sensor-1", "-P", password])
            return (result.status, ContinuousClock.now - start)
        }
        #expect(try await timedPublish(token).status == 0)
        for _ in 0..<3 { #expect(try await timedPublish(wrong).status != 0) }
        // Three failures on record: the fourth attempt waits 400 ms × 2² before it is checked,
        // even with the right token.
        let delayed = try await timedPublish(token)
        #expect(delayed.status == 0 && delayed.elapsed >= .milliseconds(1_500), "\(delayed.elapsed)")
        let cleared = try await timedPublish(token)
        #expect(cleared.status == 0 && cleared.elapsed < .milliseconds(1_000), "\(cleared.elapsed)")
        #expect(try await broker.stop() == 0)
    }

    @Test("revoking a token ends a connected mosquitto_sub (DISCONNECT 0x98) within a second")
    func revokeTokenDisconnectsMosquitto() async throws {
        let broker = try await startBroker(listeners: ["mqtt://127.0.0.1:0", "http://127.0.0.1:0"])
        let port = try #require(broker.ports["mqtt"])
        let token = try await device(broker, "sensor-1")
        let subscriber = try RunningTool(
            "mosquitto_sub",
            ["-p", String(port), "-V", "mqttv5", "-u", "sensor-1", "-P", token, "-t", "t", "-d"])
        try await subscriber.waitForOutput("received SUBACK")
        let id = try #require(
            try await iam(broker, ["token", "list", "sensor-1"]).split(separator: "\n").last?.split(separator: " ")
                .first)
        let revokedAt = ContinuousClock.now
        try await iam(broker, ["token", "revoke", String(id)])
        try await subscriber.waitForOutput("Received DISCONNECT (152)", timeout: .seconds(3))
        #expect(ContinuousClock.now - revokedAt < .seconds(1.5))
        let again = try await publish(port, ["-u", "sensor-1", "-P", token])
        #expect(again.status != 0)
        let metrics = try await runTool(
            "curl", ["-sS", "http://127.0.0.1:\(try #require(broker.ports["http"]))/metrics"])
        #expect(metrics.output.contains("gatehouse_revocations_enforced_total 1"), "\(metrics.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("disabling an identity ends a connected paho-mqtt 3.1.1 client; enabling lets it back")
    func disableIdentityDisconnectsPaho() async throws {
        let broker = try await startBroker()
        let token = try await device(broker, "sensor-2")
        let client = try RunningTool("python3", [Self.pahoSession, String(broker.port), "sensor-2", token, "311"])
        try await client.waitForOutput("connected")
        try await iam(broker, ["identity", "disable", "sensor-2"])
        try await client.waitForOutput("disconnected", timeout: .seconds(3))
        try await broker.waitForLog("session ended: its identity or credential changed")
        #expect(try await publish(broker.port, ["-u", "sensor-2", "-P", token]).status != 0)
        try await iam(broker, ["identity", "enable", "sensor-2"])
        #expect(try await publish(broker.port, ["-u", "sensor-2", "-P", token]).status == 0)
        #expect(try await broker.stop() == 0)
    }

    @Test("removing a role ends the sessions that had it")
    func roleRemoval() async throws {
        let broker = try await startBroker()
        let token = try await device(broker, "sensor-3")
        let subscriber = try RunningTool(
            "mosquitto_sub",
            ["-p", String(broker.port), "-V", "mqttv5", "-u", "sensor-3", "-P", token, "-t", "t", "-d"])
        try await subscriber.waitForOutput("received SUBACK")
        try await iam(broker, ["role", "revoke", "sensor-3", "device"])
        try await subscriber.waitForOutput("Received DISCONNECT (152)", timeout: .seconds(3))
        #expect(try await broker.stop() == 0)
    }

    @Test("a token that expires while connected ends its session at expiry")
    func expiryEndsSession() async throws {
        let broker = try await startBroker()
        let token = try await device(broker, "sensor-4", expires: "3s")
        let subscriber = try RunningTool(
            "mosquitto_sub",
            ["-p", String(broker.port), "-V", "mqttv5", "-u", "sensor-4", "-P", token, "-t", "t", "-d"])
        try await subscriber.waitForOutput("received SUBACK")
        try await subscriber.waitForOutput("Received DISCONNECT (135)", timeout: .seconds(6))
        #expect(try await broker.stop() == 0)
    }

    @Test("a session belongs to its identity; client ids can be restricted to a pattern")
    func sessionOwnership() async throws {
        let broker = try await startBroker()
        let owner = try await device(broker, "owner")
        let intruder = try await device(broker, "intruder")
        let port = String(broker.port)
        // A persistent 3.1.1 session, left behind with a queued message.
        let first = try RunningTool(
            "mosquitto_sub",
            ["-p", port, "-u", "owner", "-P", owner, "-i", "shared", "-c", "-q", "1", "-t", "o/#", "-d"])
        try await first.waitForOutput("received SUBACK")
        first.kill(SIGKILL)
        _ = try await first.waitForExit()
        #expect(
            try await publish(broker.port, ["-u", "owner", "-P", owner], topic: "o/1", message: "private").status == 0)
        for cleanSession in [[], ["-c"]] {
            let stolen = try await runTool(
                "mosquitto_sub",
                [
                    "-p", port, "-u", "intruder", "-P", intruder, "-i", "shared", "-q", "1", "-t", "o/#", "-C", "1",
                    "-W", "2",
                ]
                    + cleanSession)
            #expect(
                stolen.status != 0 && stolen.output.lowercased().contains("not authori")
                    && !stolen.output.contains("private"),
                "\(stolen.output)")
        }
        try await broker.waitForLog("CONNECT refused: the session belongs to another identity")
        let resumed = try await runTool(
            "mosquitto_sub",
            ["-p", port, "-u", "owner", "-P", owner, "-i", "shared", "-c", "-q", "1", "-t", "o/#", "-C", "1"])
        #expect(resumed.output.contains("private"), "\(resumed.output)")

        try await iam(broker, ["identity", "client-ids", "intruder", "%u-*"])
        try await Task.sleep(for: .seconds(1))  // the broker's view follows the store within 250 ms
        #expect(try await publish(broker.port, ["-u", "intruder", "-P", intruder, "-i", "intruder-7"]).status == 0)
        #expect(try await publish(broker.port, ["-u", "intruder", "-P", intruder, "-i", "owner-7"]).status != 0)
        #expect(try await broker.stop() == 0)
    }

    @Test(
        "a JWT Gatehouse issued is a password and can be revoked; a client certificate bound to an identity needs none")
    func jwtAndCertificate() async throws {
        let broker = try await startBroker(listeners: ["mqtt://127.0.0.1:0", "mqtts://127.0.0.1:0"])
        _ = try await device(broker, "sensor-5")
        let jwt = try await iam(broker, ["jwt", "issue", "sensor-5", "--ttl", "5m"])
        #expect(jwt.hasPrefix("eyJ"))
        #expect(try await publish(broker.port, ["-u", "sensor-5", "-P", jwt]).status == 0)
        #expect(try await publish(broker.port, ["-u", "other", "-P", jwt]).status != 0)
        // Revoking that one JWT ends the session it opened and refuses it from then on.
        let subscriber = try RunningTool(
            "mosquitto_sub", ["-p", String(broker.port), "-V", "mqttv5", "-u", "sensor-5", "-P", jwt, "-t", "t", "-d"])
        try await subscriber.waitForOutput("received SUBACK")
        let listed = try await iam(broker, ["jwt", "list", "sensor-5"])
        let tokenID = try #require(listed.split(separator: "\n").last?.split(separator: " ").first.map(String.init))
        #expect(tokenID.hasPrefix("jwt_") && listed.contains("active"))
        try await iam(broker, ["jwt", "revoke", tokenID])
        try await subscriber.waitForOutput("Received DISCONNECT (152)", timeout: .seconds(3))
        #expect(try await publish(broker.port, ["-u", "sensor-5", "-P", jwt]).status != 0)
        #expect(try await iam(broker, ["jwt", "list", "sensor-5"]).contains("revoked"))
        let again = try await runGatehouse(
            ["iam", "jwt", "revoke", tokenID, "--data-dir", broker.dataDirectory.path])
        #expect(again.status != 0 && again.standardError.contains("no unrevoked JWT"), "\(again.standardError)")

        let certificates = broker.certificatesDirectory
        let made = try await runGatehouse(["certs", "dev", "--out", certificates, "--client", "sensor-5"])
        #expect(made.status == 0, "\(made.standardError)")
        let tls = try #require(broker.ports["mqtts"])
        let withCertificate = [
            "-h", "localhost", "--cafile", "\(certificates)/ca.pem", "--cert", "\(certificates)/client-sensor-5.pem",
            "--key", "\(certificates)/client-sensor-5.key",
        ]
        #expect(try await publish(tls, withCertificate).status != 0)  // not bound yet: no credential at all
        let binding = try await iam(
            broker, ["cert", "bind", "sensor-5", "--pem", "\(certificates)/client-sensor-5.pem"])
        let accepted = try await publish(tls, withCertificate)
        #expect(accepted.status == 0, "\(accepted.output)")
        try await iam(broker, ["cert", "unbind", binding])
        // The broker sees the CLI's change at its next poll (every 250 ms).
        try await Task.sleep(for: .seconds(1))
        #expect(try await publish(tls, withCertificate).status != 0)
        #expect(try await broker.stop() == 0)
    }
}
