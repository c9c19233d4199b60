import Foundation
import Testing

/// MQTT over ws:// and wss:// with paho-mqtt's WebSocket transport and raw sockets
/// (Clients/websocket_checks.py, one check a run), and mosquitto clients on the same broker.
@Suite("06 WebSocket listeners", .serialized)
struct WebSocketTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/websocket_checks.py").path

    private func startBroker() async throws -> BrokerProcess {
        let broker = try BrokerProcess(
            arguments: ["--allow-anonymous"],
            listeners: ["mqtt://127.0.0.1:0", "ws://127.0.0.1:0/mqtt", "wss://127.0.0.1:0"])
        try await broker.waitUntilListening()
        return broker
    }

    private func check(_ name: String, on broker: BrokerProcess) async throws -> ToolResult {
        try await runTool(
            "python3",
            [
                Self.script, name, String(broker.ports["ws"] ?? 0), String(broker.ports["wss"] ?? 0),
                "\(broker.certificatesDirectory)/ca.pem",
            ],
            timeout: .seconds(30))
    }

    @Test("paho over ws and wss carries messages far larger than one WebSocket frame")
    func largeMessages() async throws {
        let broker = try await startBroker()
        let result = try await check("large-messages", on: broker)
        #expect(result.status == 0 && result.output.contains("ok"), "\(result.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("packets split across frames and several packets in one frame; ping answered; close frame on DISCONNECT")
    func framing() async throws {
        let broker = try await startBroker()
        let result = try await check("split-packets", on: broker)
        #expect(result.status == 0 && result.output.contains("ok"), "\(result.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("wrong path, wrong subprotocol and text frames are refused and logged; other clients carry on")
    func refusals() async throws {
        let broker = try await startBroker()
        let subscriber = try RunningTool("mosquitto_sub", ["-p", String(broker.port), "-t", "w/#", "-v", "-d"])
        try await subscriber.waitForOutput("received SUBACK")
        let result = try await check("refusals", on: broker)
        #expect(result.status == 0 && result.output.contains("ok"), "\(result.output)")
        try await broker.waitForLog("path '/other' is not '/mqtt'")
        try await broker.waitForLog("no acceptable subprotocol (offered: chat)")
        try await broker.waitForLog("text frame; MQTT uses binary frames")
        let published = try await runTool(
            "mosquitto_pub", ["-p", String(broker.port), "-t", "w/after", "-m", "still here"])
        #expect(published.status == 0)
        try await subscriber.waitForOutput("w/after still here")
        #expect(try await broker.stop() == 0)
    }
}
