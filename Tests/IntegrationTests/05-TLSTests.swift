import Foundation
import GatehouseCertificates
import Testing

/// MQTTS listeners with certificates the tests make, driven by mosquitto_pub/mosquitto_sub
/// and openssl s_client: mutual TLS required and optional, every refusal, SIGHUP rotation.
@Suite("05 TLS listeners", .serialized)
struct TLSTests {
    /// A broker whose listeners (a plain one first, then the given TLS ones) come from a file.
    private func startBroker(tlsListeners: [String]) async throws -> BrokerProcess {
        let configuration = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID()).yaml")
        try ("listeners:\n  - mqtt://127.0.0.1:0\n" + tlsListeners.joined()).write(
            to: configuration, atomically: true, encoding: .utf8)
        let broker = try BrokerProcess(
            arguments: ["--config", configuration.path, "--allow-anonymous"], listeners: [],
            listenerCount: 1 + tlsListeners.count)
        try await broker.waitUntilListening()
        return broker
    }

    private func listener(
        _ pki: TestPKI, server: (certificate: String, key: String), mode: String, crl: String? = nil
    ) -> String {
        """
          - url: mqtts://127.0.0.1:0
            tls:
              certificate: \(server.certificate)
              key: \(server.key)
              client_ca: \(pki.caFile)
              client_certificates: \(mode)\(crl.map { "\n      crl: \($0)" } ?? "")

        """
    }

    private func publish(
        port: Int, cafile: String, client: (certificate: String, key: String)? = nil, topic: String = "t/1",
        message: String = "m"
    ) async throws -> ToolResult {
        var arguments = [
            "-h", "localhost", "-p", String(port), "--cafile", cafile, "-t", topic, "-m", message, "-q", "1",
        ]
        if let client { arguments += ["--cert", client.certificate, "--key", client.key] }
        return try await runTool("mosquitto_pub", arguments)
    }

    @Test("a required listener accepts a client certificate the CA signed and refuses every other")
    func requiredClientCertificates() async throws {
        let pki = try TestPKI()
        let server = try pki.issue("server", usage: .server)
        let device = try pki.issue("device-1")
        let expired = try pki.issue(
            "expired", notValidBefore: Date().addingTimeInterval(-7_200),
            notValidAfter: Date().addingTimeInterval(-3_600))
        let early = try pki.issue(
            "early", notValidBefore: Date().addingTimeInterval(3_600), notValidAfter: Date().addingTimeInterval(7_200))
        let revoked = try pki.issue("revoked")
        let crl = try await pki.revoke(revoked.certificate)
        let strangers = try TestPKI()  // kept alive: its files go with it
        let stranger = try strangers.issue("stranger")

        let broker = try await startBroker(tlsListeners: [listener(pki, server: server, mode: "required", crl: crl)])
        let port = broker.listenerPorts[1]

        let subscriber = try RunningTool(
            "mosquitto_sub",
            [
                "-h", "localhost", "-p", String(port), "--cafile", pki.caFile, "--cert", device.certificate, "--key",
                device.key, "-t", "t/#", "-v", "-d",
            ])
        try await subscriber.waitForOutput("received SUBACK")

        let refusals: [(String, (certificate: String, key: String)?, String)] = [
            ("no certificate", nil, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
            ("expired", expired, "client certificate expired"),
            ("not yet valid", early, "client certificate not yet valid"),
            ("unknown CA", stranger, "client certificate not signed by a trusted CA"),
            ("revoked", revoked, "client certificate revoked"),
        ]
        for (what, client, reason) in refusals {
            let result = try await publish(port: port, cafile: pki.caFile, client: client, message: what)
            #expect(result.status != 0, "\(what) was accepted: \(result.output)")
            try await broker.waitForLog(reason)
        }
        // The broker keeps serving: the subscriber got only the one good message.
        let accepted = try await publish(port: port, cafile: pki.caFile, client: device, message: "from device-1")
        #expect(accepted.status == 0, "\(accepted.output)")
        try await subscriber.waitForOutput("t/1 from device-1")
        for (what, _, _) in refusals { #expect(!subscriber.output.contains("t/1 \(what)")) }
        #expect(try await broker.stop() == 0)
    }

    @Test("an optional listener accepts clients with and without a certificate, but not a bad one")
    func optionalClientCertificates() async throws {
        let pki = try TestPKI()
        let server = try pki.issue("server", usage: .server)
        let device = try pki.issue("device-1")
        let broker = try await startBroker(tlsListeners: [listener(pki, server: server, mode: "optional")])
        let port = broker.listenerPorts[1]
        #expect(try await publish(port: port, cafile: pki.caFile).status == 0)
        #expect(try await publish(port: port, cafile: pki.caFile, client: device).status == 0)
        let strangers = try TestPKI()  // kept alive: its files go with it
        let stranger = try strangers.issue("stranger")
        #expect(try await publish(port: port, cafile: pki.caFile, client: stranger).status != 0)
        try await broker.waitForLog("client certificate not signed by a trusted CA")
        #expect(try await broker.stop() == 0)
    }

    @Test("plaintext MQTT, TLS 1.0 and TLS 1.1 on a TLS port are refused and logged")
    func plaintextAndOldTLS() async throws {
        let pki = try TestPKI()
        let broker = try await startBroker(tlsListeners: [
            listener(pki, server: try pki.issue("server", usage: .server), mode: "none")
        ])
        let port = String(broker.listenerPorts[1])
        let plaintext = try await runTool("mosquitto_pub", ["-p", port, "-t", "t", "-m", "m"])
        #expect(plaintext.status != 0)
        try await broker.waitForLog("handshake failed: WRONG_VERSION_NUMBER")
        for (index, version) in ["-tls1", "-tls1_1"].enumerated() {
            let old = try await runTool(
                "openssl", ["s_client", "-connect", "127.0.0.1:\(port)", version, "-cipher", "DEFAULT:@SECLEVEL=0"])
            #expect(old.output.contains("alert protocol version"), "\(version): \(old.output)")
            // Each attempt is logged with its reason.
            try await waitForText("refused \(index + 1) times", in: "the broker log", timeout: .seconds(10)) {
                "refused \(broker.log.components(separatedBy: "handshake failed: UNSUPPORTED_PROTOCOL").count - 1) times"
            }
        }
        let modern = try await runTool(
            "openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-alpn", "mqtt", "-CAfile", pki.caFile])
        #expect(modern.output.contains("ALPN protocol: mqtt"), "\(modern.output)")
        #expect(modern.output.contains("Verify return code: 0 (ok)"), "\(modern.output)")
        #expect(try await publish(port: Int(port) ?? 0, cafile: pki.caFile).status == 0)
        #expect(try await broker.stop() == 0)
    }

    @Test("SIGHUP rotates the server certificate; connected clients stay; a broken file keeps the old one")
    func certificateRotation() async throws {
        let first = try TestPKI()
        let second = try TestPKI()
        let live = try first.issue("live", usage: .server)
        let broker = try await startBroker(tlsListeners: [listener(first, server: live, mode: "optional")])
        let port = broker.listenerPorts[1]
        let subscriber = try RunningTool(
            "mosquitto_sub", ["-h", "localhost", "-p", String(port), "--cafile", first.caFile, "-t", "r/#", "-v", "-d"])
        try await subscriber.waitForOutput("received SUBACK")

        // Replace the files in place with a certificate from the second CA, then SIGHUP.
        let next = try second.issue("next", usage: .server)
        try FileManager.default.removeItem(atPath: live.certificate)
        try FileManager.default.removeItem(atPath: live.key)
        try FileManager.default.copyItem(atPath: next.certificate, toPath: live.certificate)
        try FileManager.default.copyItem(atPath: next.key, toPath: live.key)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("TLS files reloaded")
        #expect(try await publish(port: port, cafile: first.caFile, topic: "r/old").status != 0)
        let rotated = try await publish(port: port, cafile: second.caFile, topic: "r/new", message: "after rotation")
        #expect(rotated.status == 0, "\(rotated.output)")
        try await subscriber.waitForOutput("r/new after rotation")

        // A key that does not match the certificate: refused, the second CA's context stays.
        let mismatched = try second.issue("mismatched", usage: .server)
        try FileManager.default.removeItem(atPath: live.key)
        try FileManager.default.copyItem(atPath: mismatched.key, toPath: live.key)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("does not match certificate")
        // A certificate file that is not PEM at all: refused too.
        try "not a certificate".write(toFile: live.certificate, atomically: true, encoding: .utf8)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("cannot read certificate")
        let kept = try await publish(port: port, cafile: second.caFile, topic: "r/kept", message: "old context kept")
        #expect(kept.status == 0, "\(kept.output)")
        try await subscriber.waitForOutput("r/kept old context kept")
        #expect(broker.log.components(separatedBy: "TLS reload failed").count == 3)
        #expect(try await broker.stop() == 0)
    }

    @Test("with no TLS files configured, serve makes development certificates that MQTTS clients can trust")
    func developmentCertificatesOnFirstStart() async throws {
        let broker = try BrokerProcess(
            arguments: ["--allow-anonymous"], listeners: ["mqtt://127.0.0.1:0", "mqtts://127.0.0.1:0"])
        try await broker.waitUntilListening()
        try await broker.waitForLog("created development certificates")
        let certificates = broker.certificatesDirectory
        for key in ["ca.key", "server.key"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(certificates)/\(key)")
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(key) is not 0600")
        }
        let port = try #require(broker.ports["mqtts"])
        #expect(try await publish(port: port, cafile: "\(certificates)/ca.pem").status == 0)
        #expect(try await broker.stop() == 0)
    }

    @Test("gatehouse certs dev writes a CA, a server and a client certificate that openssl verifies")
    func certsDevCommand() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("certs-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let made = try await runTool(
            BrokerProcess.binary.path, ["certs", "dev", "--out", directory, "--client", "sensor-1"])
        #expect(made.status == 0, "\(made.output)")
        let verified = try await runTool(
            "openssl",
            ["verify", "-CAfile", "\(directory)/ca.pem", "\(directory)/server.pem", "\(directory)/client-sensor-1.pem"])
        #expect(verified.status == 0 && verified.output.contains("client-sensor-1.pem: OK"), "\(verified.output)")
        let subject = try await runTool(
            "openssl", ["x509", "-in", "\(directory)/client-sensor-1.pem", "-noout", "-subject"])
        #expect(subject.output.contains("CN = sensor-1"), "\(subject.output)")
        // A second client under the same CA keeps the CA: the first client certificate still verifies.
        _ = try await runTool(BrokerProcess.binary.path, ["certs", "dev", "--out", directory, "--client", "sensor-2"])
        let both = try await runTool(
            "openssl",
            [
                "verify", "-CAfile", "\(directory)/ca.pem", "\(directory)/client-sensor-1.pem",
                "\(directory)/client-sensor-2.pem",
            ])
        #expect(both.status == 0, "\(both.output)")
        let refused = try await runTool(
            BrokerProcess.binary.path, ["certs", "dev", "--out", directory, "--client", "../x"])
        #expect(refused.status != 0)
    }
}
