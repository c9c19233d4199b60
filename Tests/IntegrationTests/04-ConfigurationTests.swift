import Foundation
import Testing

/// `gatehouse serve --config FILE`, and flags over the file.
@Suite("04 configuration", .serialized)
struct ConfigurationTests {
    private func writeConfiguration(_ text: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString).yaml")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    @Test("settings come from the file; the data directory holds the pid file while the broker runs")
    func fromFile() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "gh-data-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let file = try writeConfiguration(
            """
            allow_anonymous: true
            sys_interval: 0
            limits:
              max_topic_levels: 2
            """)
        defer { try? FileManager.default.removeItem(at: file) }
        // BrokerProcess adds --listen and --data-dir; the flag's data directory wins over the file.
        let broker = try BrokerProcess(arguments: ["--config", file.path, "--data-dir", dataDirectory.path])
        try await broker.waitUntilListening()
        let pidFile = dataDirectory.appendingPathComponent("gatehouse.pid")
        let pid = try String(contentsOf: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(pid == String(broker.process.processIdentifier))

        // Anonymous access came from the file, and so did the two-level limit (5.0 PUBACK 0x90).
        let port = String(broker.port)
        let shallow = try await runTool(
            "mosquitto_pub", ["-p", port, "-V", "mqttv5", "-t", "a/b", "-m", "x", "-q", "1"])
        #expect(shallow.status == 0, "\(shallow.output)")
        let deep = try await runTool(
            "mosquitto_pub", ["-p", port, "-V", "mqttv5", "-t", "a/b/c", "-m", "x", "-q", "1", "-d"])
        // mosquitto_pub -d prints the reason code; 144 = 0x90 Topic Name invalid.
        #expect(deep.output.contains("received PUBACK (Mid: 1, RC:144)"), "\(deep.output)")

        #expect(try await broker.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: pidFile.path), "the pid file outlived the broker")
    }

    @Test("GATEHOUSE_ environment variables override the file; a bad one is refused by its name")
    func environmentOverrides() async throws {
        let file = try writeConfiguration("allow_anonymous: true\nsys_interval: 0\nlimits:\n  max_topic_levels: 2\n")
        defer { try? FileManager.default.removeItem(at: file) }
        let broker = try BrokerProcess(
            arguments: ["--config", file.path], environment: ["GATEHOUSE_LIMITS__MAX_TOPIC_LEVELS": "3"])
        try await broker.waitUntilListening()
        let port = String(broker.port)
        let three = try await runTool(
            "mosquitto_pub", ["-p", port, "-V", "mqttv5", "-t", "a/b/c", "-m", "x", "-q", "1", "-d"])
        // Three levels pass the limit (whatever the ACL then says); four get 0x90.
        #expect(three.output.contains("received PUBACK") && !three.output.contains("RC:144"), "\(three.output)")
        let four = try await runTool(
            "mosquitto_pub", ["-p", port, "-V", "mqttv5", "-t", "a/b/c/d", "-m", "x", "-q", "1", "-d"])
        #expect(four.output.contains("received PUBACK (Mid: 1, RC:144)"), "\(four.output)")
        #expect(try await broker.stop() == 0)

        let refused = try await runGatehouse(
            ["serve", "--config", file.path], environment: ["GATEHOUSE_LIMITS__MAX_TOPIC_LEVEL": "3"])
        #expect(refused.status != 0)
        #expect(
            refused.standardError.contains(
                "environment variable GATEHOUSE_LIMITS__MAX_TOPIC_LEVEL: unknown key 'max_topic_level' in 'limits'"),
            "\(refused.standardError)")
    }

    @Test("the CLI takes --data-dir before the subcommand, and GATEHOUSE_DATA_DIR without it")
    func dataDirectoryBeforeSubcommand() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "gh-cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let added = try await runGatehouse(["iam", "--data-dir", dataDirectory.path, "tenant", "add", "north"])
        #expect(added.status == 0, "\(added.standardError)")
        let addedAgain = try await runGatehouse(["iam", "tenant", "--data-dir=\(dataDirectory.path)", "add", "south"])
        #expect(addedAgain.status == 0, "\(addedAgain.standardError)")
        let listed = try await runGatehouse(
            ["iam", "tenant", "list"], environment: ["GATEHOUSE_DATA_DIR": dataDirectory.path])
        #expect(
            listed.status == 0 && listed.standardOutput.contains("north") && listed.standardOutput.contains("south"),
            "\(listed.standardOutput)\(listed.standardError)")
        #expect(FileManager.default.fileExists(atPath: dataDirectory.appendingPathComponent("iam.sqlite").path))
    }

    @Test("a broken file is refused with file:line:column and a non-zero exit")
    func brokenFile() async throws {
        let file = try writeConfiguration("listeners:\n  - mqtt://127.0.0.1:0\nlimits:\n  connect_timeout: never\n")
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try await runTool(BrokerProcess.binary.path, ["serve", "--config", file.path])
        #expect(result.status != 0)
        #expect(
            result.output.contains("\(file.path):4:20: 'connect_timeout' must be a whole number"), "\(result.output)")
    }
}
