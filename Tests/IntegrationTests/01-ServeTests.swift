import Foundation
import Testing

/// `gatehouse serve` as an operator runs it, driven by mosquitto_pub 2.0.
@Suite("01 serve", .serialized)
struct ServeTests {
    @Test("without --allow-anonymous, mosquitto_pub 5.0, 3.1.1 and 3.1 are each refused in their own version")
    func realClientsAreAnsweredInTheirVersion() async throws {
        let broker = try BrokerProcess()
        try await broker.waitUntilListening()
        let port = String(broker.port)

        let v5 = try await runTool(
            "mosquitto_pub", ["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-t", "a", "-m", "b"])
        #expect(v5.status == 0x87, "\(v5.output)")
        #expect(v5.output.contains("Not authorized"), "\(v5.output)")

        let v311 = try await runTool(
            "mosquitto_pub", ["-h", "127.0.0.1", "-p", port, "-V", "mqttv311", "-t", "a", "-m", "b"])
        #expect(v311.output.contains("not authorised"), "\(v311.output)")

        let v31 = try await runTool(
            "mosquitto_pub", ["-h", "127.0.0.1", "-p", port, "-V", "mqttv31", "-t", "a", "-m", "b"])
        #expect(v31.output.contains("unacceptable protocol version"), "\(v31.output)")

        #expect(broker.log.contains("unsupportedProtocolVersion(3)"))
        #expect(try await broker.stop(signal: SIGTERM) == 0, "\(broker.log)")
        #expect(broker.log.contains("listeners closed"))
    }

    @Test("SIGINT shuts down gracefully too")
    func sigint() async throws {
        let broker = try BrokerProcess()
        try await broker.waitUntilListening()
        #expect(try await broker.stop(signal: SIGINT) == 0, "\(broker.log)")
    }

    @Test("a listener URL it cannot serve is refused with a clear error and a non-zero exit")
    func badListener() async throws {
        let result = try await runTool(BrokerProcess.binary.path, ["serve", "--listen", "mqtt://127.0.0.1"])
        #expect(result.status != 0)
        #expect(result.output.contains("has no port"), "\(result.output)")
    }

    @Test("a port already in use is an error, not a hang")
    func portInUse() async throws {
        let first = try BrokerProcess()
        try await first.waitUntilListening()
        let second = try await runTool(
            BrokerProcess.binary.path, ["serve", "--listen", "mqtt://127.0.0.1:\(first.port)"])
        #expect(second.status != 0)
        #expect(second.output.lowercased().contains("address already in use"), "\(second.output)")
        _ = try await first.stop()
    }
}
