import Foundation
import Testing

/// A `gatehouse serve` process on a free loopback port, for tests that drive it with real
/// clients. The port comes from the broker's own "listening on" log line (it binds port 0).
final class BrokerProcess {
    let process = Process()
    let logURL: URL
    let dataDirectory: URL
    /// The first listener's port (mqtt:// unless told otherwise).
    private(set) var port = 0
    /// Each listener's port by scheme: "mqtt", "mqtts", "ws", "wss".
    private(set) var ports: [String: Int] = [:]

    /// Port of each listener, in the order they were declared.
    private(set) var listenerPorts: [Int] = []
    private let listenerCount: Int

    /// `listeners` become `--listen` flags; with a configuration file that declares them
    /// instead, pass `listeners: []` and how many it declares as `listenerCount`.
    init(
        arguments: [String] = [], listeners: [String] = ["mqtt://127.0.0.1:0"], listenerCount: Int? = nil,
        environment: [String: String] = [:]
    ) throws {
        self.listenerCount = listenerCount ?? listeners.count
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        process.executableURL = BrokerProcess.binary
        dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "gatehouse-data-\(UUID().uuidString)")
        process.arguments =
            ["serve"] + listeners.flatMap { ["--listen", $0] } + ["--data-dir", dataDirectory.path] + arguments
        process.standardOutput = log
        process.standardError = log
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        try process.run()
    }

    deinit {
        // A test that meant to stop the broker has done so; anything left is killed outright.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
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

    /// The development certificates the broker made on first start.
    var certificatesDirectory: String { dataDirectory.appendingPathComponent("certs").path }

    /// Waits until the broker says where each listener listens.
    func waitUntilListening(timeout: Duration = .seconds(20)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let bound = log.matches(of: /listening on (\w+):\/\/127\.0\.0\.1:(\d+)/)
            if bound.count >= listenerCount {
                for match in bound { ports[String(match.1)] = Int(match.2) }
                listenerPorts = bound.compactMap { Int($0.2) }
                port = Int(bound[0].2) ?? 0
                return
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("broker did not start listening; log:\n\(log)")
        throw CancellationError()
    }

    /// Waits until the log contains `text` (a reload's outcome, a refusal's reason).
    func waitForLog(_ text: String, timeout: Duration = .seconds(10)) async throws {
        try await waitForText(text, in: "the broker log", timeout: timeout) { self.log }
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
    process.standardInput = FileHandle.nullDevice
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

/// Polls `read` until it contains `text`; records an issue showing what it held and throws if it never does.
func waitForText(_ text: String, in place: String, timeout: Duration, read: () -> String) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if read().contains(text) { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("'\(text)' never appeared in \(place):\n\(read())")
    throw CancellationError()
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
        try await waitForText(text, in: "the output", timeout: timeout) { self.output }
    }

    func waitForExit(timeout: Duration = .seconds(10)) async throws -> Int32 {
        try await IntegrationTests.waitForExit(process, timeout: timeout)
    }

    func kill(_ signal: Int32) { Foundation.kill(process.processIdentifier, signal) }
}

struct SplitResult {
    var status: Int32
    var standardOutput: String
    var standardError: String
}

/// Runs the gatehouse binary with `input` on standard input, keeping its two outputs apart
/// (a token must be alone on standard output).
func runGatehouse(
    _ arguments: [String], input: String? = nil, environment: [String: String] = [:],
    timeout: Duration = .seconds(20)
) async throws -> SplitResult {
    let process = Process()
    process.executableURL = BrokerProcess.binary
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let base = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)")
    let outURL = base.appendingPathExtension("out")
    let errURL = base.appendingPathExtension("err")
    let inURL = base.appendingPathExtension("in")
    for url in [outURL, errURL] { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
    _ = FileManager.default.createFile(atPath: inURL.path, contents: Data((input ?? "").utf8))
    defer { for url in [outURL, errURL, inURL] { try? FileManager.default.removeItem(at: url) } }
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    process.standardInput = try FileHandle(forReadingFrom: inURL)
    try process.run()
    let status = try await waitForExit(process, timeout: timeout)
    return SplitResult(
        status: status, standardOutput: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
        standardError: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
}

/// An ACL for tests about who may connect: role `device` may use every topic.
let devicesMayUseEverything: String = {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("devices-\(UUID()).acl").path
    try? "default deny\nrole device\n  allow all #\n".write(toFile: path, atomically: true, encoding: .utf8)
    return path
}()

/// `gatehouse iam ARGS --data-dir DATA` on a running broker's data directory, expecting
/// success; returns standard output.
@discardableResult
func iam(_ broker: BrokerProcess, _ arguments: [String], input: String? = nil) async throws -> String {
    let result = try await runGatehouse(["iam"] + arguments + ["--data-dir", broker.dataDirectory.path], input: input)
    #expect(result.status == 0, "iam \(arguments.joined(separator: " ")): \(result.standardError)")
    return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
}

extension BrokerProcess {
    /// An anonymous broker with MQTT listeners (`mqttListeners`, each a YAML list item: a URL
    /// or a flow mapping) and an HTTP listener, configured in a fresh directory (removed by the
    /// caller); `extra` adds YAML, given that directory.
    static func withHTTPSide(
        mqttListeners: [String] = ["mqtt://127.0.0.1:0"], environment: [String: String] = [:],
        extra: (URL) throws -> String = { _ in "" }
    ) throws -> (BrokerProcess, URL) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("broker-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = directory.appendingPathComponent("gatehouse.yaml")
        try """
        listeners:
        \(mqttListeners.map { "  - \($0)\n" }.joined())  - http://127.0.0.1:0
        allow_anonymous: true
        sys_interval: 0
        \(try extra(directory))
        """.write(to: config, atomically: true, encoding: .utf8)
        let broker = try BrokerProcess(
            arguments: ["--config", config.path], listeners: [], listenerCount: mqttListeners.count + 1,
            environment: environment)
        return (broker, directory)
    }
}
