import ArgumentParser
import Foundation
import GatehouseBench
import MQTTCore
import Synchronization
import UnixSignals

/// `gatehouse bench conn|pub|sub|pubsub`: load for any MQTT broker, in the manner of
/// emqtt-bench.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load-test an MQTT broker: connections, publishers, subscribers, or both with end-to-end latency.",
        discussion: """
            Prints a progress line every second and a summary at the end (throughput, and latency \
            p50/p90/p99/max); exits 1 when clients failed to connect, were disconnected, had \
            publishes refused, or lost QoS 1/2 messages. Payloads start with a CLOCK_MONOTONIC \
            timestamp, so 'bench sub' measures the latency of a 'bench pub' on the same machine.
            """,
        subcommands: [Conn.self, Pub.self, Sub.self, PubSub.self]
    )

    struct Conn: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open --count connections and hold them for --duration seconds.")
        @OptionGroup var options: BenchOptions
        func run() async throws { try await options.run(.conn) }
    }

    struct Pub: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "--count publishers sending to --topic (%i: the client's number).")
        @OptionGroup var options: BenchOptions
        func run() async throws { try await options.run(.pub) }
    }

    struct Sub: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "--count subscribers of --topic, measuring throughput and delivery latency.")
        @OptionGroup var options: BenchOptions
        func run() async throws { try await options.run(.sub) }
    }

    struct PubSub: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pubsub",
            abstract: "--count publishers and --subscribers subscribers in one run: throughput, loss and latency.")
        @OptionGroup var options: BenchOptions
        func run() async throws { try await options.run(.pubsub) }
    }
}

struct BenchOptions: ParsableArguments {
    @Option(help: "The broker's host.") var host = "127.0.0.1"
    @Option(name: .shortAndLong, help: "The broker's port (default: 1883, or 8883 with --tls).") var port: Int?
    @Option(name: .shortAndLong, help: "Clients (publishers for pubsub).") var count = 10
    @Option(help: "Subscribers of a pubsub run.") var subscribers = 1
    @Option(name: .shortAndLong, help: "Topic; %i is the client's number, %c its client id.") var topic = "bench/%i"
    @Option(help: "The subscribers' filter, %i and %c as in --topic (default: --topic with %i and %c as +).")
    var filter: String?
    @Option(name: .shortAndLong, help: "QoS 0, 1 or 2.") var qos = 0
    @Option(name: .shortAndLong, help: "Payload bytes (at least 16).") var size = 64
    @Option(name: .shortAndLong, help: "Messages per second over all publishers; 0: as fast as the broker takes them.")
    var rate: Double = 0
    @Option(name: .customShort("I"), help: "Milliseconds between one publisher's messages (instead of --rate).")
    var interval: Double?
    @Option(help: "Unacknowledged QoS 1/2 publishes per publisher.") var inflight = 16
    @Option(help: "pubsub: messages per publisher not yet received by every subscriber; 0: no limit.")
    var window = 64
    @Option(name: .customShort("L"), help: "Messages per publisher (for sub: per subscriber), then stop; 0: none.")
    var limit = 0
    @Option(name: .shortAndLong, help: "Seconds to measure once every client is ready; 0: until interrupted.")
    var duration: Double = 10
    @Option(name: .shortAndLong, help: "User name.") var username: String?
    @Option(name: .customShort("P"), help: "Password (or a token).") var password: String?
    @Option(name: .customShort("V"), help: "MQTT version: 3 or 4 for 3.1.1, 5 for 5.0.") var version = 5
    @Option(name: .shortAndLong, help: "Keep alive, seconds.") var keepAlive: UInt16 = 300
    @Flag(inversion: .prefixedNo, help: "Clean start (--no-clean keeps sessions, with 5.0's longest expiry).")
    var clean = true
    @Option(help: "Client id prefix.") var prefix = "bench"
    @Flag(help: "Connect with TLS.") var tls = false
    @Option(help: "CA file that verifies the server (PEM).") var cafile: String?
    @Option(help: "Client certificate (PEM), for mutual TLS.") var cert: String?
    @Option(help: "The client certificate's key (PEM).") var key: String?
    @Option(help: "The name the server certificate must carry (default: the host, unless an address).")
    var serverName: String?
    @Flag(help: "Do not verify the server's certificate.") var insecure = false
    @Option(help: "Connections being set up at once.") var connectConcurrency = 64
    @Option(
        help: ArgumentHelp(
            "Local addresses to connect from, in turn (comma-separated): past one address's port range.",
            valueName: "addresses"))
    var bind: String?
    @Option(help: "Event loop threads of the load generator.") var threads = 1
    @Flag(help: "Print the summary as one JSON object.") var json = false

    func plan(_ scenario: BenchPlan.Scenario) throws -> BenchPlan {
        var plan = BenchPlan(scenario: scenario)
        plan.host = host
        plan.port = port ?? (tls ? 8883 : 1883)
        plan.count = count
        plan.subscribers = subscribers
        plan.topic = topic
        plan.subscriptionFilter = filter
        guard let qos = MQTTQoS(rawValue: UInt8(clamping: qos)), qos.rawValue == self.qos else {
            throw ValidationError("--qos must be 0, 1 or 2")
        }
        plan.qos = qos
        plan.payloadSize = size
        if let interval {
            guard interval > 0 else { throw ValidationError("-I must be more than 0 milliseconds") }
            plan.rate = 1000 / interval * Double(count)
        } else {
            plan.rate = rate
        }
        plan.inflight = inflight
        plan.deliveryWindow = window
        plan.limit = limit
        plan.duration = duration
        plan.username = username
        plan.password = password
        switch version {
        case 3, 4: plan.protocolVersion = .v311
        case 5: plan.protocolVersion = .v5
        default: throw ValidationError("-V must be 3, 4 (both MQTT 3.1.1) or 5")
        }
        plan.keepAlive = keepAlive
        plan.cleanStart = clean
        plan.clientIdentifierPrefix = prefix
        if tls || cafile != nil || cert != nil {
            plan.tls = BenchPlan.TLS(
                caFile: cafile, certificateFile: cert, keyFile: key, serverName: serverName, insecure: insecure)
        }
        plan.connectConcurrency = connectConcurrency
        plan.sourceAddresses = bind.map { $0.split(separator: ",").map { String($0) } } ?? []
        plan.threads = threads
        if let problem = plan.validate() { throw ValidationError(problem) }
        return plan
    }

    func run(_ scenario: BenchPlan.Scenario) async throws {
        let plan = try plan(scenario)
        let interrupted = InterruptFlag()
        let summary: BenchSummary
        do {
            summary = try await BenchRunner(plan: plan).run(
                progress: { line in
                    // Progress to stderr under --json, so stdout is the summary alone.
                    if json { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
                },
                shouldStop: { interrupted.isSet })
        } catch {
            FileHandle.standardError.write(Data("gatehouse bench: \(error)\n".utf8))
            throw ExitCode(2)
        }
        print(json ? summary.json : summary.text)
        if !summary.problems.isEmpty {
            if !json { for problem in summary.problems { print("problem: \(problem)") } }
            throw ExitCode.failure
        }
    }
}

/// Set by SIGINT, so that an interrupted run still prints its summary.
final class InterruptFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    init() {
        Task { [weak self] in
            for await _ in await UnixSignalsSequence(trapping: .sigint) {
                self?.flag.store(true, ordering: .relaxed)
            }
        }
    }

    var isSet: Bool { flag.load(ordering: .relaxed) }
}
