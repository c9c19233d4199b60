public import MQTTCore
import NIOCore

/// What one `gatehouse bench` run does, in the terms of emqtt-bench: how many clients of each
/// kind, what they send, and where.
public struct BenchPlan: Sendable {
    public enum Scenario: String, Sendable, CaseIterable {
        /// Connect `connections` clients and hold them.
        case conn
        /// `publishers` clients publishing to `topic`.
        case pub
        /// `subscribers` clients subscribed to `topic`, measuring delivery latency.
        case sub
        /// Both in one process, so that every message's latency is measured end to end.
        case pubsub
    }

    public struct TLS: Sendable {
        public var caFile: String?
        public var certificateFile: String?
        public var keyFile: String?
        /// The name the server certificate must carry; the host when nil.
        public var serverName: String?
        /// Skips verifying the server's certificate (a test broker with a throwaway CA).
        public var insecure: Bool

        public init(
            caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
            serverName: String? = nil, insecure: Bool = false
        ) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.serverName = serverName
            self.insecure = insecure
        }
    }

    public var scenario: Scenario
    public var host = "127.0.0.1"
    public var port = 1883
    /// Local addresses the clients connect from, in turn (client n from the n-th, modulo): one
    /// address reaches a listener from at most one port range's worth of connections.
    public var sourceAddresses: [String] = []
    public var tls: TLS?
    public var protocolVersion = MQTTProtocolVersion.v5
    /// The client count for `conn`, `pub` and `sub`; the publishers for `pubsub`.
    public var count = 10
    /// The subscribers of a `pubsub` run.
    public var subscribers = 1
    /// Client identifiers are this, `-`, and the client's number (from 1); `pubsub` puts
    /// `sub-` or `pub-` before the number.
    public var clientIdentifierPrefix = "bench"
    public var username: String?
    public var password: String?
    public var keepAlive: UInt16 = 300
    public var cleanStart = true
    /// A topic, or a filter for subscribers; `%i` is the client's number, `%c` its identifier.
    public var topic = "bench/%i"
    /// The filter `pubsub` subscribers use; `topic` with `%i` as `+` when nil.
    public var subscriptionFilter: String?
    public var qos = MQTTQoS.atMostOnce
    /// Bytes of payload, at least the 16 of the timestamp and sequence header.
    public var payloadSize = 64
    /// Messages per second over all publishers; 0 publishes as fast as the broker takes them.
    public var rate: Double = 0
    /// Unacknowledged QoS 1/2 publishes a publisher may have.
    public var inflight = 16
    /// pubsub: messages a publisher may have that not every subscriber has received yet
    /// (`mqttload --window`); 0 for none. Applies with the default filter only.
    public var deliveryWindow = 64
    /// Messages each publisher sends before it stops; 0 for no limit.
    public var limit = 0
    /// Seconds to run once every client is ready; 0 until interrupted.
    public var duration: Double = 10
    /// Connections opened at once while the clients start.
    public var connectConcurrency = 64
    /// Event loop threads of the load generator.
    public var threads = 1

    public init(scenario: Scenario) { self.scenario = scenario }

    public var publisherCount: Int {
        switch scenario {
        case .pub, .pubsub: count
        case .conn, .sub: 0
        }
    }

    public var subscriberCount: Int {
        switch scenario {
        case .sub: count
        case .pubsub: subscribers
        case .conn, .pub: 0
        }
    }

    /// `bench-pub-3`, `bench-sub-1`, `bench-conn-7`: the role is in the name, so that a `pub`
    /// run beside a `sub` run with the same prefix does not take over its sessions.
    public func clientIdentifier(number: Int, subscriber: Bool) -> String {
        let role = scenario == .conn ? "conn" : subscriber ? "sub" : "pub"
        return "\(clientIdentifierPrefix)-\(role)-\(number)"
    }

    /// `pattern` with `%i` replaced by `number` and `%c` by the client identifier.
    public static func expand(_ pattern: String, number: Int, clientIdentifier: String) -> String {
        pattern.replacing("%i", with: String(number)).replacing("%c", with: clientIdentifier)
    }

    public var effectiveSubscriptionFilter: String {
        subscriptionFilter ?? topic.replacing("%i", with: "+").replacing("%c", with: "+")
    }

    /// The first problem with the plan, in the words of the option at fault.
    public func validate() -> String? {
        if !(1...65_535).contains(port) { return "--port must be 1 to 65535" }
        if count < 1 { return "--count must be at least 1" }
        if scenario == .pubsub, subscribers < 1 { return "--subscribers must be at least 1" }
        if payloadSize < BenchPayload.headerSize {
            return "--size must be at least \(BenchPayload.headerSize) (the timestamp and sequence)"
        }
        if rate < 0 { return "--rate must not be negative" }
        if !(1...65_535).contains(inflight) { return "--inflight must be 1 to 65535" }
        if limit < 0 { return "--limit must not be negative" }
        if deliveryWindow < 0 { return "--window must not be negative" }
        if duration < 0 { return "--duration must not be negative" }
        if connectConcurrency < 1 { return "--connect-concurrency must be at least 1" }
        if threads < 1 { return "--threads must be at least 1" }
        if let wrong = sourceAddresses.first(where: { (try? SocketAddress(ipAddress: $0, port: 0)) == nil }) {
            return "--bind takes IP addresses: '\(wrong)' is not one"
        }
        if scenario == .pub || scenario == .pubsub {
            let sample = Self.expand(topic, number: 1, clientIdentifier: clientIdentifier(number: 1, subscriber: false))
            if sample.contains("+") || sample.contains("#") { return "--topic must not hold wildcards for publishers" }
        }
        if tls?.certificateFile != nil, tls?.keyFile == nil { return "--cert needs --key" }
        return nil
    }
}

/// The first 16 bytes of every payload: the send time (monotonic nanoseconds, which every
/// process on the machine shares), the publisher's number and the message's sequence.
public enum BenchPayload {
    public static let headerSize = 16
}
