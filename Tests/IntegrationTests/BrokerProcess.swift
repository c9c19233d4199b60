import Foundation
import Testing

/// A `gatehouse serve` process on a free loopback port, for tests that drive it with real
/// clients. The port comes from the broker's own "listening on" log line (it binds port 0).
final class BrokerProcess {
    let process = Process()
    let logURL: URL
    let dataDirectory: URL
    private(set) var port = 0

    init(arguments: [String] = []) throws {
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        process.executableURL = BrokerProcess.binary
        dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "gatehouse-data-\(UUID().uuidString)")
        process.arguments = ["serve", "--listen", "mqtt://127.0.0.1:0", "--data-dir", dataDirectory.path] + arguments
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    deinit {
        if process.isRunning { process.terminate() }
        try? FileManager.default.removeItem(at: logURL)
        try? FileManager.default.removeItem(at: dataDirectory)
    }

    /// The binary SwiftPM built beside the test bundle, or $GATEHOUSE_BINARY.
    static var binary: URL {
        if let path = ProcessInfo.processInfo.environment["GATEHOUSE_BINARY"] { return URL(fileURLWithPath: path) }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "gatehouse")
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// Waits until the broker says where it listens.
    func waitUntilListening(timeout: Duration = .seconds(20)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if let match = log.firstMatch(of: /listening on mqtt:\/\/127\.0\.0\.1:(\d+)/), let port = Int(match.1) {
                self.port = port
                return
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("broker did not start listening; log:\n\(log)")
        throw CancellationError()
    }

    /// Sends `signal` and returns the exit status.
    func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) async throws -> Int32 {
        kill(process.processIdentifier, signal)
        return try await waitForExit(process, timeout: timeout)
    }
}

struct ToolResult {
    var status: Int32
    var output: String
}

/// Runs a client tool (mosquitto_pub, python3 …) found on PATH, with a time limit.
func runTool(_ name: String, _ arguments: [String], timeout: Duration = .seconds(15)) async throws -> ToolResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [name] + arguments
    let outputURL = FileManager.default.temporaryDirectory.appendingPathComponent("tool-\(UUID().uuidString).out")
    _ = FileManager.default.createFile(atPath: outputURL.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: outputURL) }
    let output = try FileHandle(forWritingTo: outputURL)
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let readOutput = { (try? String(contentsOf: outputURL, encoding: .utf8)) ?? "" }
    do {
        let status = try await waitForExit(process, timeout: timeout)
        return ToolResult(status: status, output: readOutput())
    } catch {
        Issue.record("\(name) \(arguments.joined(separator: " ")) printed:\n\(readOutput())")
        throw error
    }
}

func waitForExit(_ process: Process, timeout: Duration) async throws -> Int32 {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while process.isRunning {
        guard clock.now < deadline else {
            process.terminate()
            Issue.record("\(process.executableURL?.lastPathComponent ?? "process") did not exit within \(timeout)")
            throw CancellationError()
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    return process.terminationStatus
}

/// A client left running (a subscriber), whose output the test waits on.
final class RunningTool {
    let process = Process()
    let outputURL: URL

    init(_ name: String, _ arguments: [String]) throws {
        outputURL = FileManager.default.temporaryDirectory.appendingPathComponent("tool-\(UUID().uuidString).out")
        _ = FileManager.default.createFile(atPath: outputURL.path, contents: nil)
        let output = try FileHandle(forWritingTo: outputURL)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Line-buffered, so that each received message is in the file as soon as it arrives.
        process.arguments = ["stdbuf", "-oL", name] + arguments
        process.standardOutput = output
        process.standardError = output
        try process.run()
    }

    deinit {
        // SIGKILL: the clients' own signal handlers do not run reliably under the test runner.
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: outputURL)
    }

    var output: String { (try? String(contentsOf: outputURL, encoding: .utf8)) ?? "" }

    /// Waits until the output contains `text`; records an issue and throws if it never does.
    func waitForOutput(_ text: String, timeout: Duration = .seconds(10)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if output.contains(text) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("'\(text)' never appeared; output:\n\(output)")
        throw CancellationError()
    }

    func waitForExit(timeout: Duration = .seconds(10)) async throws -> Int32 {
        try await IntegrationTests.waitForExit(process, timeout: timeout)
    }

    func kill(_ signal: Int32) { Foundation.kill(process.processIdentifier, signal) }
}
