import Foundation
import Testing

/// Applications with per-tenant service users and bootstrap credentials (seed 000), and the
/// admin API in the style of SCIM, driven by Python `requests`, paho-mqtt and mosquitto_sub.
@Suite("11 applications and the admin API", .serialized)
struct ApplicationsTests {
    static let flow = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/applications_flow.py").path

    @Test(
        "two tenants subscribe; bootstrap credentials fetch both service users; each stays in its tenant; unsubscribing cuts one"
    )
    func serviceUsers() async throws {
        let acl = FileManager.default.temporaryDirectory.appendingPathComponent("applications-\(UUID()).acl")
        defer { try? FileManager.default.removeItem(at: acl) }
        // As acl/examples/service-users.acl: %t keeps each service user inside its own tenant.
        try """
        default deny
        role device
          allow all #
        role analytics-reader
          allow all tenants/%t/#
        """.write(to: acl, atomically: true, encoding: .utf8)
        let broker = try BrokerProcess(
            arguments: ["--acl", acl.path], listeners: ["mqtt://127.0.0.1:0", "http://127.0.0.1:0"])
        try await broker.waitUntilListening()
        let mqtt = try #require(broker.ports["mqtt"])
        let http = try #require(broker.ports["http"])
        setenv("GATEHOUSE_BINARY", BrokerProcess.binary.path, 1)
        let result = try await runTool(
            "python3", [Self.flow, String(http), String(mqtt), broker.dataDirectory.path], timeout: .seconds(120))
        #expect(result.status == 0 && result.output.contains("done"), "\(result.output)\nbroker log:\n\(broker.log)")
        #expect(!broker.log.contains("ghb_"), "a bootstrap secret reached the log")
        #expect(try await broker.stop() == 0)
    }
}
