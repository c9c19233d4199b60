import Foundation
import Testing

/// MQTT 5.0 features driven by paho-mqtt 2.x (Clients/paho_mqtt5.py, one check a run).
@Suite("03 paho-mqtt 5.0", .serialized)
struct PahoMQTT5Tests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/paho_mqtt5.py").path

    @Test(
        "paho-mqtt 5.0 checks",
        arguments: [
            "user-properties-and-expiry", "expired-message", "topic-alias", "no-local", "session-expiry",
            "shared-subscription",
        ])
    func check(_ name: String) async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous"])
        try await broker.waitUntilListening()
        let result = try await runTool("python3", [Self.script, String(broker.port), name], timeout: .seconds(30))
        #expect(
            result.status == 0 && result.output.contains("ok"), "\(name): \(result.output)\nbroker log:\n\(broker.log)")
        #expect(try await broker.stop() == 0)
    }
}

@Suite("03 paho-mqtt 5.0: shutdown")
struct PahoShutdownTests {
    @Test("SIGTERM sends a connected 5.0 client DISCONNECT 0x8B before the broker exits 0")
    func shutdownDisconnect() async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous"])
        try await broker.waitUntilListening()
        let client = try RunningTool("python3", [PahoMQTT5Tests.script, String(broker.port), "shutdown-disconnect"])
        try await client.waitForOutput("connected")
        #expect(try await broker.stop(signal: SIGTERM) == 0, "\(broker.log)")
        #expect(try await client.waitForExit(timeout: .seconds(20)) == 0, "\(client.output)")
        #expect(client.output.contains("ok"), "\(client.output)")
    }
}

@Suite("03 MQTT 5.0: the broker's DISCONNECT reaches a client that is still writing")
struct DisconnectDrainTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/disconnect_drain.py").path

    @Test("a protocol error is answered with DISCONNECT 0x94, and the client's writes after it do not fail")
    func drainAfterDisconnect() async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous"])
        try await broker.waitUntilListening()
        let result = try await runTool("python3", [Self.script, String(broker.port)], timeout: .seconds(20))
        #expect(result.status == 0 && result.output.contains("ok"), "\(result.output)\nbroker log:\n\(broker.log)")
        #expect(try await broker.stop() == 0)
    }
}
