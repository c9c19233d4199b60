import Foundation
import Testing

/// MQTT 5.0 features driven by paho-mqtt 2.x (Clients/paho_mqtt5.py, one check a run).
@Suite("03 paho-mqtt 5.0", .serialized)
struct PahoMQTT5Tests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/paho_mqtt5.py").path

    @Test(
        "paho-mqtt 5.0 checks",
        arguments: ["user-properties-and-expiry", "expired-message", "topic-alias", "no-local", "session-expiry"])
    func check(_ name: String) async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous"])
        try await broker.waitUntilListening()
        let result = try await runTool("python3", [Self.script, String(broker.port), name], timeout: .seconds(30))
        #expect(
            result.status == 0 && result.output.contains("ok"), "\(name): \(result.output)\nbroker log:\n\(broker.log)")
        #expect(try await broker.stop() == 0)
    }
}
