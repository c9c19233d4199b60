import Foundation
import Testing

/// The broker core driven by mosquitto_pub and mosquitto_sub 2.0, in both protocol versions.
@Suite("02 mosquitto clients", .serialized)
struct MosquittoClientTests {
    static let versions = ["mqttv311", "mqttv5"]

    /// A mosquitto_sub left running, returned once its SUBACK has arrived (-d prints it).
    private func subscribed(_ arguments: [String]) async throws -> RunningTool {
        let subscriber = try RunningTool("mosquitto_sub", arguments + ["-d"])
        try await subscriber.waitForOutput("received SUBACK")
        return subscriber
    }

    private func startBroker() async throws -> BrokerProcess {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous"])
        try await broker.waitUntilListening()
        return broker
    }

    @Test("QoS 0, 1 and 2 from mosquitto_pub reach mosquitto_sub", arguments: versions)
    func qualityOfService(version: String) async throws {
        let broker = try await startBroker()
        let port = String(broker.port)
        let subscriber = try await subscribed(["-p", port, "-V", version, "-t", "q/#", "-q", "2", "-v", "-C", "3"])
        for qos in ["0", "1", "2"] {
            let published = try await runTool(
                "mosquitto_pub", ["-p", port, "-V", version, "-t", "q/\(qos)", "-m", "at qos \(qos)", "-q", qos])
            #expect(published.status == 0, "\(published.output)")
        }
        #expect(try await subscriber.waitForExit() == 0)
        for qos in ["0", "1", "2"] {
            #expect(subscriber.output.contains("q/\(qos) at qos \(qos)"), "\(subscriber.output)")
        }
        #expect(try await broker.stop() == 0)
    }

    @Test("a retained message is set, replaced, delivered to new subscribers, and cleared", arguments: versions)
    func retained(version: String) async throws {
        let broker = try await startBroker()
        let port = String(broker.port)
        for payload in ["old", "new"] {
            _ = try await runTool(
                "mosquitto_pub", ["-p", port, "-V", version, "-t", "r/x", "-m", payload, "-r", "-q", "1"])
        }
        let first = try await runTool(
            "mosquitto_sub", ["-p", port, "-V", version, "-t", "r/+", "-C", "1", "-v", "-W", "5"])
        #expect(first.output.trimmingCharacters(in: .whitespacesAndNewlines) == "r/x new", "\(first.output)")

        _ = try await runTool("mosquitto_pub", ["-p", port, "-V", version, "-t", "r/x", "-n", "-r", "-q", "1"])
        // --retained-only exits at the first live message: the marker ends the check without a timer.
        let second = try await subscribed(["-p", port, "-V", version, "-t", "r/+", "-v", "--retained-only"])
        _ = try await runTool("mosquitto_pub", ["-p", port, "-V", version, "-t", "r/end", "-m", "live"])
        #expect(try await second.waitForExit() == 0)
        #expect(!second.output.contains("r/x"), "the cleared message came back: \(second.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("the Will is published when a client is killed with SIGKILL", arguments: versions)
    func willOnKill(version: String) async throws {
        let broker = try await startBroker()
        let port = String(broker.port)
        let watcher = try await subscribed(["-p", port, "-V", version, "-t", "status/#", "-v"])
        let victim = try await subscribed([
            "-p", port, "-V", version, "-t", "x", "--will-topic", "status/victim", "--will-payload", "died",
        ])
        victim.kill(SIGKILL)
        try await watcher.waitForOutput("status/victim died")
        #expect(try await broker.stop() == 0)
    }

    @Test("no Will after a normal disconnect")
    func noWillOnNormalDisconnect() async throws {
        let broker = try await startBroker()
        let port = String(broker.port)
        let watcher = try await subscribed(["-p", port, "-t", "status/#", "-v"])
        let polite = try await runTool(
            "mosquitto_pub",
            ["-p", port, "-t", "x", "-m", "bye", "--will-topic", "status/polite", "--will-payload", "died"])
        #expect(polite.status == 0)
        _ = try await runTool("mosquitto_pub", ["-p", port, "-t", "status/marker", "-m", "end"])
        try await watcher.waitForOutput("status/marker end")
        #expect(!watcher.output.contains("status/polite"), "\(watcher.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("a persistent session catches up on QoS 1 messages published while it was away", arguments: versions)
    func persistentSession(version: String) async throws {
        let broker = try await startBroker()
        let port = String(broker.port)
        // 3.1.1: -c keeps the session; 5.0 also needs a session expiry interval.
        let persistence = version == "mqttv5" ? ["-c", "-x", "300"] : ["-c"]
        // -C 1: after one message the client sends DISCONNECT and exits, keeping its session.
        let away = try await subscribed(
            ["-p", port, "-V", version, "-i", "durable-\(version)", "-q", "1", "-t", "jobs/#", "-C", "1"]
                + persistence)
        _ = try await runTool("mosquitto_pub", ["-p", port, "-V", version, "-t", "jobs/0", "-m", "first", "-q", "1"])
        #expect(try await away.waitForExit() == 0)

        let published = try await runTool(
            "mosquitto_pub", ["-p", port, "-V", version, "-t", "jobs/1", "-m", "while-away", "-q", "1"])
        #expect(published.status == 0)

        let back = try await runTool(
            "mosquitto_sub",
            [
                "-p", port, "-V", version, "-i", "durable-\(version)", "-q", "1", "-t", "jobs/#", "-C", "1", "-v", "-W",
                "5",
            ]
                + persistence)
        #expect(back.output.contains("jobs/1 while-away"), "\(back.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("$SYS/broker topics are published, and '#' does not match them")
    func systemTopics() async throws {
        let broker = try BrokerProcess(arguments: ["--allow-anonymous", "--sys-interval", "1"])
        try await broker.waitUntilListening()
        let port = String(broker.port)
        let version = try await runTool("mosquitto_sub", ["-p", port, "-t", "$SYS/broker/version", "-C", "1"])
        #expect(version.output.hasPrefix("gatehouse "), "\(version.output)")
        // The first value is the retained one from before this client connected; the next counts it.
        let clients = try await runTool(
            "mosquitto_sub", ["-p", port, "-t", "$SYS/broker/clients/connected", "-C", "2"])
        let latest = clients.output.split(separator: "\n").last.flatMap { Int($0) } ?? 0
        #expect(latest >= 1, "\(clients.output)")
        let everything = try await subscribed(["-p", port, "-t", "#", "-v"])
        _ = try await runTool("mosquitto_pub", ["-p", port, "-t", "marker", "-m", "end"])
        try await everything.waitForOutput("marker end")
        #expect(!everything.output.contains("$SYS"), "\(everything.output)")
        #expect(try await broker.stop() == 0)
    }
}
