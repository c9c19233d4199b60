import Foundation
import Testing

/// `gatehouse serve` as an operator runs it, driven by mosquitto_pub 2.0.
@Suite("01 serve", .serialized)
struct ServeTests {
    @Test("under a service manager: READY=1 once listening, RELOADING=1 and READY=1 on SIGHUP, STOPPING=1 on SIGTERM")
    func serviceManagerNotifications() async throws {
        let socket = try NotifySocket()
        let broker = try BrokerProcess(environment: ["NOTIFY_SOCKET": socket.path])
        try await broker.waitUntilListening()
        let ready = try socket.receive(until: "READY=1")
        #expect(ready.last?.contains("MAINPID=\(broker.process.processIdentifier)") == true, "\(ready)")
        kill(broker.process.processIdentifier, SIGHUP)
        let reload = try socket.receive(until: "READY=1")
        #expect(reload.first?.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") == true, "\(reload)")
        #expect(try await broker.stop() == 0)
        _ = try socket.receive(until: "STOPPING=1")
    }

    @Test("--log-format json writes one JSON object per line, metadata included")
    func jsonLogs() async throws {
        let broker = try BrokerProcess(arguments: ["--log-format", "json"])
        try await broker.waitUntilListening()
        _ = try await runTool("mosquitto_pub", ["-p", String(broker.port), "-V", "mqttv5", "-t", "a", "-m", "b"])
        #expect(try await broker.stop() == 0)
        let lines = broker.log.split(separator: "\n").filter { !$0.isEmpty }
        let objects = lines.compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
        #expect(!lines.isEmpty && objects.count == lines.count, "not all JSON:\n\(broker.log)")
        #expect(objects.allSatisfy { $0["ts"] is String && $0["level"] is String && $0["message"] is String })
        #expect(objects.contains { ($0["message"] as? String)?.hasPrefix("listening on mqtt://127.0.0.1:") == true })
        // A refused CONNECT is logged with the connection's metadata as fields.
        #expect(objects.contains { $0["remote"] != nil }, "\(broker.log)")
    }

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

/// A datagram socket standing in for systemd's notification socket.
private final class NotifySocket {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString).sock").path
    private let descriptor: Int32

    init() throws {
        descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard descriptor >= 0, bound == 0 else { throw NotifySocketError(description: "cannot bind \(path)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(descriptor)
        unlink(path)
    }

    /// The messages received up to and including one that contains `line`.
    func receive(until line: String, timeout: Duration = .seconds(10)) throws -> [String] {
        var messages: [String] = []
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            let count = recv(descriptor, &buffer, buffer.count, 0)
            guard count > 0 else { continue }
            let message = String(decoding: buffer[..<count], as: UTF8.self)
            messages.append(message)
            if message.split(separator: "\n").contains(Substring(line)) { return messages }
        }
        throw NotifySocketError(description: "no \(line) within \(timeout); got \(messages)")
    }
}

private struct NotifySocketError: Error, CustomStringConvertible {
    var description: String
}
