import Foundation
import Testing

/// The status page at `/` in a real browser: headless Chromium renders it against a running
/// broker with clients connected, and what it shows is checked against `/api/status`.
@Suite("16 status page", .serialized)
struct StatusPageTests {
    /// The page after its scripts ran (virtual time lets its polls happen at once).
    private func render(_ url: String) async throws -> String {
        let result = try await runTool(
            "chromium",
            [
                "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", url,
            ], timeout: .seconds(60))
        #expect(result.status == 0, "\(result.output)")
        return result.output
    }

    /// The text of the element with `id` in the dumped page.
    private func element(_ id: String, in page: String) -> String? {
        guard let start = page.range(of: "id=\"\(id)\"") else { return nil }
        let rest = page[start.upperBound...]
        guard let open = rest.firstIndex(of: ">") else { return nil }
        let text = rest[rest.index(after: open)...]
        return String(text.prefix { $0 != "<" })
    }

    @Test("the connection count it renders is the broker's; a refused ACL reload shows its file:line")
    func rendersTheBrokersState() async throws {
        let (broker, directory) = try BrokerProcess.withHTTPSide { directory in
            let acl = directory.appendingPathComponent("test.acl")
            try "default deny\nrole anonymous\n  allow all #\n".write(to: acl, atomically: true, encoding: .utf8)
            return "acl: \(acl.path)"
        }
        defer { try? FileManager.default.removeItem(at: directory) }
        let acl = directory.appendingPathComponent("test.acl")
        try await broker.waitUntilListening()
        let mqtt = String(try #require(broker.ports["mqtt"]))
        let http = try #require(broker.ports["http"])
        let subscribers = try (0..<3).map { index in
            try RunningTool("mosquitto_sub", ["-p", mqtt, "-t", "fleet/\(index)", "-d"])
        }
        for subscriber in subscribers { try await subscriber.waitForOutput("received SUBACK") }
        for index in 0..<5 {
            _ = try await runTool("mosquitto_pub", ["-p", mqtt, "-t", "fleet/0", "-m", "reading \(index)", "-q", "1"])
        }

        let page = try await render("http://127.0.0.1:\(http)/")
        let status = try await runTool("curl", ["-sS", "http://127.0.0.1:\(http)/api/status"])
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any], "\(status.output)")
        #expect(json["connections"] as? Int == 3, "\(status.output)")
        #expect(element("connections", in: page) == "3", "\(page)")
        #expect(element("subscriptions", in: page) == "3")
        #expect(element("state", in: page) == "live")
        #expect(page.contains("mqtt://127.0.0.1:\(mqtt)"))
        #expect(page.contains("token.create"), "the first start's audit entries")

        // A broken ACL is refused on SIGHUP; the page says where.
        try "default deny\nrole anonymous\n  allow al #\n".write(to: acl, atomically: true, encoding: .utf8)
        kill(broker.process.processIdentifier, SIGHUP)
        try await broker.waitForLog("ACL reload refused")
        let afterReload = try await render("http://127.0.0.1:\(http)/")
        #expect(afterReload.contains("\(acl.path):3:"), "\(afterReload)")
        for subscriber in subscribers { subscriber.kill(SIGKILL) }
        #expect(try await broker.stop() == 0)
    }
}
