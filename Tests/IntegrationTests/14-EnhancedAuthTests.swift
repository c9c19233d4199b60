import Foundation
import Testing

/// MQTT 5 enhanced authentication against the real binary, with the raw-socket client of
/// `Clients/enhanced_auth.py` (SCRAM written there from RFC 5802; paho-mqtt cannot send AUTH).
@Suite("14 enhanced authentication: SCRAM-SHA-256 and re-authentication", .serialized)
struct EnhancedAuthTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/enhanced_auth.py").path

    /// A broker with devices `sensor-1` and `sensor-2` in tenant acme.
    private func startBroker(_ arguments: [String] = [], withHTTP: Bool = false) async throws -> BrokerProcess {
        let broker = try BrokerProcess(
            arguments: ["--acl", devicesMayUseEverything] + arguments,
            listeners: ["mqtt://127.0.0.1:0"] + (withHTTP ? ["http://127.0.0.1:0"] : []))
        try await broker.waitUntilListening()
        for command in [
            ["tenant", "add", "acme"],
            ["identity", "add", "sensor-1", "--tenant", "acme", "--kind", "device", "--role", "device"],
            ["identity", "add", "sensor-2", "--tenant", "acme", "--kind", "device", "--role", "device"],
        ] {
            _ = try await iam(broker, command)
        }
        return broker
    }

    @discardableResult
    private func client(_ broker: BrokerProcess, _ arguments: [String], timeout: Duration = .seconds(30))
        async throws -> String
    {
        let result = try await runTool(
            "python3", ["-u", Self.script, arguments[0], String(broker.port)] + arguments.dropFirst(),
            timeout: timeout)
        #expect(result.status == 0 && result.output.hasSuffix("ok\n"), "\(arguments): \(result.output)")
        return result.output
    }

    @Test(
        "SCRAM: the right password connects and the server proves it holds the verifier; the rest get 0x87 or 0x8C; /metrics counts both"
    )
    func scram() async throws {
        let broker = try await startBroker(withHTTP: true)
        try await iam(broker, ["password", "set", "sensor-1"], input: "pencil sharpener\n")
        try await client(broker, ["scram", "sensor-1", "pencil sharpener", "00"])
        // A wrong password and an unknown user get the same answer.
        try await client(broker, ["scram", "sensor-1", "pencil sharpened", "87"])
        try await client(broker, ["scram", "nobody", "pencil sharpener", "87"])
        let again = try await client(broker, ["scram-reauth", "sensor-1", "pencil sharpener"])
        #expect(again.contains("re-authenticated with SCRAM"))
        try await client(broker, ["scram-tampered", "sensor-1", "pencil sharpener"])
        try await client(broker, ["bad-method"])
        try await client(broker, ["auth-before-connect"])
        let token = try await iam(broker, ["token", "create", "sensor-2"])
        try await client(broker, ["auth-v311", "sensor-2", token])
        try await broker.waitForLog("SCRAM refused")
        let http = try #require(broker.ports["http"])
        let metrics = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/metrics"])
        let counted = metrics.output.split(separator: "\n").filter { $0.contains("method=\"SCRAM-SHA-256\"") }
        // Accepted: the first connect, and the connect and re-authentication of scram-reauth.
        #expect(
            counted.contains("gatehouse_connects_total{method=\"SCRAM-SHA-256\",result=\"accepted\"} 3"),
            "\(counted)")
        // Refused: at least the wrong password and the unknown user (the tampered proof may be
        // refused before or after SCRAM's own check).
        let refused = counted.first {
            $0.hasPrefix("gatehouse_connects_total{method=\"SCRAM-SHA-256\",result=\"refused\"}")
        }
        #expect((refused?.split(separator: " ").last.flatMap { Double($0) } ?? 0) >= 2, "\(counted)")
        #expect(try await broker.stop() == 0)
    }

    @Test("a method the configuration does not enable is refused with 0x8C")
    func disabledMethod() async throws {
        let configuration = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID()).yaml")
        try "authentication:\n  enhanced_methods: [GH-JWT]\n".write(
            to: configuration, atomically: true, encoding: .utf8)
        let broker = try await startBroker(["--config", configuration.path])
        try await iam(broker, ["password", "set", "sensor-1"], input: "pencil sharpener\n")
        try await client(broker, ["scram", "sensor-1", "pencil sharpener", "8c"])
        #expect(try await broker.stop() == 0)
    }

    @Test("re-authentication with a fresh JWT keeps the session past the first JWT's expiry")
    func reauthenticationKeepsTheSession() async throws {
        let broker = try await startBroker()
        let short = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "3s"])
        let fresh = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "5m"])
        let output = try await client(broker, ["reauth-keeps-session", "sensor-1", short, fresh, "4"])
        #expect(output.contains("QoS 1 delivered after the first JWT expired"))
        #expect(try await broker.stop() == 0)
    }

    @Test("a re-authentication with an expired, a revoked or another identity's JWT ends the session (0x87)")
    func refusedReauthentication() async throws {
        let broker = try await startBroker()
        let first = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "5m"])
        let expiring = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "1s"])
        let revoked = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "5m"])
        let listed = try await iam(broker, ["jwt", "list", "sensor-1"])
        // Newest first: the one issued last is the first listed.
        let revokedID = try #require(listed.split(separator: "\n").dropFirst().first?.split(separator: " ").first)
        try await iam(broker, ["jwt", "revoke", String(revokedID)])
        let someoneElse = try await iam(broker, ["jwt", "issue", "sensor-2", "--ttl", "5m"])
        try await Task.sleep(for: .seconds(2))  // the 1 s JWT has expired, the revocation is seen
        for bad in [expiring, revoked, someoneElse] {
            try await client(broker, ["reauth-refused", "sensor-1", first, bad])
        }
        #expect(try await broker.stop() == 0)
    }

    @Test("revoking the JWT a session re-authenticated with ends that session")
    func revocationAfterReauthentication() async throws {
        let broker = try await startBroker()
        let first = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "5m"])
        let fresh = try await iam(broker, ["jwt", "issue", "sensor-1", "--ttl", "5m"])
        let session = try RunningTool(
            "python3",
            ["-u", Self.script, "reauth-then-wait", String(broker.port), "sensor-1", first, fresh])
        try await session.waitForOutput("reauthenticated")
        let newest = try await iam(broker, ["jwt", "list", "sensor-1"])
        let freshID = try #require(newest.split(separator: "\n").dropFirst().first?.split(separator: " ").first)
        try await iam(broker, ["jwt", "revoke", String(freshID)])
        try await session.waitForOutput("DISCONNECT 0x98", timeout: .seconds(5))
        #expect(try await session.waitForExit() == 0, "\(session.output)")
        #expect(try await broker.stop() == 0)
    }
}
