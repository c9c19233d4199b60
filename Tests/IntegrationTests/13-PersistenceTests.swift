import Foundation
import Testing

/// Each scenario of `Clients/persistence_restart.py` runs the broker, kills or stops it and
/// starts it again on the same data directory (its own, under the temporary directory).
@Suite("13 durable broker: what was acknowledged survives SIGKILL")
struct PersistenceTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Clients/persistence_restart.py").path

    private func run(_ scenario: String, timeout: Duration = .seconds(60)) async throws {
        setenv("GATEHOUSE_BINARY", BrokerProcess.binary.path, 1)
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "gatehouse-persistence-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let result = try await runTool("python3", [Self.script, scenario, dataDirectory.path], timeout: timeout)
        var logs = ""
        for file in (try? FileManager.default.contentsOfDirectory(atPath: dataDirectory.path)) ?? []
        where file.hasSuffix(".log") {
            logs +=
                "\n--- \(file)\n"
                + ((try? String(contentsOfFile: dataDirectory.path + "/" + file, encoding: .utf8)) ?? "")
        }
        #expect(result.status == 0, "\(result.output)\(logs)")
    }

    @Test(
        "N QoS 1 and N QoS 2 messages acknowledged to the publisher reach the offline subscriber after SIGKILL, each once"
    )
    func acknowledgedMessagesSurvive() async throws { try await run("acknowledged") }

    @Test("a message sent but not acknowledged at the kill is sent again with DUP")
    func inflightResent() async throws { try await run("inflight") }

    @Test("an inbound QoS 2 message that got PUBREC before the kill is not routed twice")
    func inboundQoS2() async throws { try await run("inbound-qos2") }

    @Test("retained messages (set, replaced, cleared, expiring) and a pending delayed will survive")
    func retainedAndWill() async throws { try await run("retained-will") }

    @Test("the will of a client connected at the kill is published after the restart")
    func lostConnectionWill() async throws { try await run("lost-will") }

    @Test("a session that expired while the broker was down is gone; one that did not is back")
    func expiredWhileDown() async throws { try await run("expiry") }

    @Test("a damaged store, or one from a newer schema, stops start-up with the file's name")
    func damagedStore() async throws { try await run("damaged") }

    @Test("--persistence off writes no file and keeps sessions in memory only")
    func persistenceOff() async throws { try await run("off") }
}
