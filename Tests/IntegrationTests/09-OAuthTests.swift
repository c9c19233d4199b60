import Foundation
import GatehouseCertificates
import Testing

/// The OAuth2 authorization server on the HTTP listener, driven by Python `requests` and
/// `joserfc` (assertions signed with keys the test makes), with paho-mqtt and mosquitto_sub
/// connecting on the access tokens.
@Suite("09 OAuth2 token endpoint", .serialized)
struct OAuthTests {
    static let flows = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/oauth_flows.py").path

    /// A broker with an HTTP listener, short caches and windows so that the test need not wait.
    private func startBroker(extraOAuth: String = "", addressRate: Int = 1_000) throws -> (BrokerProcess, URL) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("oauth-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let acl = directory.appendingPathComponent("test.acl")
        try "default deny\nrole device\n  allow all #\nrole reader\n  allow subscribe #\n".write(
            to: acl, atomically: true, encoding: .utf8)
        let config = directory.appendingPathComponent("gatehouse.yaml")
        try """
        listeners:
          - mqtt://127.0.0.1:0
          - http://127.0.0.1:0
        acl: \(acl.path)
        http:
          token_rate_per_address: \(addressRate)
        oauth:
          refresh_retry_window: 1
          jwks_cache_seconds: 2
        \(extraOAuth)
        """.write(to: config, atomically: true, encoding: .utf8)
        return (try BrokerProcess(arguments: ["--config", config.path], listeners: [], listenerCount: 2), directory)
    }

    private func run(_ scenario: String, _ broker: BrokerProcess, extra: [String] = []) async throws {
        let mqtt = try #require(broker.ports["mqtt"])
        let http = try #require(broker.ports["http"])
        setenv("GATEHOUSE_BINARY", BrokerProcess.binary.path, 1)
        let result = try await runTool(
            "python3", [Self.flows, scenario, String(http), String(mqtt), broker.dataDirectory.path] + extra,
            timeout: .seconds(90))
        #expect(result.status == 0 && result.output.contains("done"), "\(result.output)\nbroker log:\n\(broker.log)")
    }

    @Test("client secret, private_key_jwt and JWT-bearer tokens publish over MQTT; each refusal has its RFC code")
    func grantsAndRefusals() async throws {
        let (broker, directory) = try startBroker()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        try await run("grants", broker)
        #expect(!broker.log.contains("ghs_"), "a client secret reached the log")
        #expect(try await broker.stop() == 0)
    }

    @Test("a client rotating the keys in its HTTPS jwks_uri needs no admin step; a removed key is refused")
    func keyRotation() async throws {
        let pki = try TestPKI()
        let server = try pki.issue("jwks-server", usage: .server)
        let (broker, directory) = try startBroker(
            extraOAuth: "  jwks_ca_file: \(pki.caFile)\n  issuer: https://auth.test")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        try await run("rotation", broker, extra: [server.certificate, server.key])
        #expect(try await broker.stop() == 0)
    }

    @Test("refresh tokens rotate; a retry gets the same successor; reuse later revokes the family and its sessions")
    func refreshRotation() async throws {
        let (broker, directory) = try startBroker()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        try await run("refresh", broker)
        #expect(try await broker.stop() == 0)
    }

    @Test("one address sending too many token requests gets 429 whatever client ids it names")
    func addressRateLimit() async throws {
        let (broker, directory) = try startBroker(addressRate: 5)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await broker.waitUntilListening()
        try await run("address-limit", broker)
        #expect(broker.log.contains("token request refused: rate limit"))
        #expect(try await broker.stop() == 0)
    }

    @Test("a bad HTTP listener or oauth key in the configuration is a located error")
    func configurationErrors() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("oauth-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("bad.yaml")
        try "listeners:\n  - mqtt://127.0.0.1:0\n  - http://127.0.0.1:0/path\noauth:\n  access_token_lifetime: 1\n"
            .write(to: config, atomically: true, encoding: .utf8)
        let result = try await runTool(BrokerProcess.binary.path, ["serve", "--config", config.path])
        #expect(result.status != 0 && result.output.contains("bad.yaml:3:"), "\(result.output)")
    }
}
