import Foundation
import Testing

/// Certificate enrollment from a CSR with a one-time token (seed 003), over the HTTPS side:
/// `openssl req`, `curl`, `mosquitto_pub`/`mosquitto_sub` and paho-mqtt, against the real binary.
@Suite("12 certificate enrollment", .serialized)
struct EnrollmentTests {
    static let flow = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/enrollment_flow.py").path

    @Test("enroll, connect with the certificate alone, refusals, renewal over mTLS, revocation, CRL and EST")
    func enrollment() async throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("enrollment-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let acl = work.appendingPathComponent("test.acl")
        try "default deny\nrole device\n  allow all #\n".write(to: acl, atomically: true, encoding: .utf8)
        let broker = try BrokerProcess(
            arguments: ["--acl", acl.path], listeners: ["mqtts://127.0.0.1:0", "https://127.0.0.1:0"])
        try await broker.waitUntilListening()
        let mqtts = try #require(broker.ports["mqtts"])
        let https = try #require(broker.ports["https"])
        setenv("GATEHOUSE_BINARY", BrokerProcess.binary.path, 1)
        let result = try await runTool(
            "python3", [Self.flow, String(https), String(mqtts), broker.dataDirectory.path, work.path],
            timeout: .seconds(120))
        #expect(result.status == 0 && result.output.contains("done"), "\(result.output)\nbroker log:\n\(broker.log)")
        #expect(!broker.log.contains("ghe_"), "an enrollment token reached the log")
        #expect(try await broker.stop() == 0)
    }
}
