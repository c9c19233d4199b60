import CoreMetrics
import Foundation
import GatehouseAuth
import GatehouseBroker
import GatehouseTransport
import Metrics
import Prometheus
import Synchronization

// swift-metrics' front ends, not Prometheus's own types of the same names.
private typealias Counter = CoreMetrics.Counter
private typealias Gauge = CoreMetrics.Gauge

/// The broker's metrics through swift-metrics, with swift-prometheus as the backend: counters
/// the broker keeps for `$SYS` are carried over at each scrape (by their increase since the
/// last), gauges are read then, and parts that time themselves (the store's commits) record
/// directly. Names follow EMQX's (`emqx_messages_received` → `gatehouse_messages_received_total`, with
/// the `_total` Prometheus asks of counters).
final class BrokerMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let lastCounts = Mutex<(counts: BrokerStatistics.Snapshot, closedAtLimit: Int)?>(nil)

    private let connections = Gauge(label: "gatehouse_connections_count")
    private let connectionsV311 = Gauge(label: "gatehouse_connections_by_protocol", dimensions: [("protocol", "3.1.1")])
    private let connectionsV5 = Gauge(label: "gatehouse_connections_by_protocol", dimensions: [("protocol", "5.0")])
    private let connectedSessions = Gauge(label: "gatehouse_sessions_count", dimensions: [("state", "connected")])
    private let offlineSessions = Gauge(label: "gatehouse_sessions_count", dimensions: [("state", "offline")])
    private let subscriptions = Gauge(label: "gatehouse_subscriptions_count")
    private let retained = Gauge(label: "gatehouse_retained_count")
    private let residentMemory = Gauge(label: "gatehouse_process_resident_memory_bytes")
    private let openDescriptors = Gauge(label: "gatehouse_process_open_fds")
    private let messagesReceived = Counter(label: "gatehouse_messages_received_total")
    private let messagesSent = Counter(label: "gatehouse_messages_sent_total")
    private let messagesDropped = Dictionary(
        uniqueKeysWithValues: DropReason.allCases.map {
            ($0, Counter(label: "gatehouse_messages_dropped_total", dimensions: [("reason", $0.label)]))
        })
    private let bytesReceived = Counter(label: "gatehouse_bytes_received_total")
    private let bytesSent = Counter(label: "gatehouse_bytes_sent_total")
    private let authorizationRefused = Counter(label: "gatehouse_authorization_refused_total")
    private let refusedOverConnectionLimit = Counter(
        label: "gatehouse_connections_refused_total", dimensions: [("reason", "max_connections")])
    private let closedAtPendingLimit = Counter(
        label: "gatehouse_connections_refused_total", dimensions: [("reason", "max_pending_connects")])
    private let pendingConnections = Gauge(label: "gatehouse_pending_connects_count")
    private let queuedBytes = Gauge(label: "gatehouse_queued_bytes")
    private let refusedOverMemoryBudget = Counter(
        label: "gatehouse_publishes_refused_total", dimensions: [("reason", "memory_budget")])
    private let disconnectedOverPublishRate = Counter(
        label: "gatehouse_disconnects_total", dimensions: [("reason", "message_rate_too_high")])
    private let refusedOverListenerLimit = Counter(
        label: "gatehouse_connections_refused_total", dimensions: [("reason", "max_connections_per_listener")])
    private let refusedOverIdentityLimit = Counter(
        label: "gatehouse_connections_refused_total", dimensions: [("reason", "max_connections_per_identity")])
    private let aclReloadsOK = Counter(label: "gatehouse_acl_reloads_total", dimensions: [("result", "ok")])
    private let aclReloadsFailed = Counter(label: "gatehouse_acl_reloads_total", dimensions: [("result", "failed")])
    private let aclRules = Gauge(label: "gatehouse_acl_rules")

    /// The ACL in force now has `rules` rules; `reload` if it replaced another.
    func aclLoaded(rules: Int, reload: Bool) {
        aclRules.record(rules)
        if reload { aclReloadsOK.increment() }
    }

    func aclReloadFailed() { aclReloadsFailed.increment() }

    /// Makes the Prometheus factory the process's metrics backend; call once, before anything
    /// creates a metric.
    static func bootstrap() -> BrokerMetrics {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Commits take from tens of microseconds to (on a slow disk) seconds.
        factory.durationHistogramBuckets["gatehouse_persistence_commit_seconds"] = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(100), .seconds(1),
        ]
        MetricsSystem.bootstrap(factory)
        return BrokerMetrics(registry: registry)
    }

    private init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Brings every metric up to date and renders the registry in the Prometheus text format.
    func scrape(_ broker: Broker, server: MQTTServer) -> [UInt8] {
        let pendingConnects = server.pendingConnects
        let counts = broker.statistics.snapshot
        let closedAtLimit = pendingConnects.closedAtLimit
        let (previous, previousClosed) = lastCounts.withLock { last in
            defer { last = (counts, closedAtLimit) }
            return (last?.counts, last?.closedAtLimit ?? 0)
        }
        if closedAtLimit > previousClosed { closedAtPendingLimit.increment(by: closedAtLimit - previousClosed) }
        pendingConnections.record(pendingConnects.count)
        func carry(_ counter: CoreMetrics.Counter, _ value: (BrokerStatistics.Snapshot) -> Int) {
            let increase = value(counts) - (previous.map(value) ?? 0)
            if increase > 0 { counter.increment(by: increase) }
        }
        carry(messagesReceived, \.messagesReceived)
        carry(messagesSent, \.messagesSent)
        for (reason, counter) in messagesDropped { carry(counter) { $0.droppedByReason[reason, default: 0] } }
        carry(bytesReceived, \.bytesReceived)
        carry(bytesSent, \.bytesSent)
        carry(authorizationRefused, \.authorizationRejections)
        carry(refusedOverConnectionLimit, \.refusedOverConnectionLimit)
        carry(refusedOverIdentityLimit, \.refusedOverIdentityLimit)
        carry(refusedOverListenerLimit, \.refusedOverListenerLimit)
        carry(disconnectedOverPublishRate, \.disconnectedOverPublishRate)
        carry(refusedOverMemoryBudget, \.refusedOverMemoryBudget)
        queuedBytes.record(counts.queuedBytes)
        connections.record(counts.clientsConnected)
        connectionsV5.record(counts.clientsConnectedV5)
        connectionsV311.record(counts.clientsConnected - counts.clientsConnectedV5)
        for (listener, connected) in server.connectionsByListener {
            // The factory hands back the same gauge for the same label and dimensions.
            Gauge(label: "gatehouse_connections_by_listener", dimensions: [("listener", "\(listener)")])
                .record(connected)
        }
        let sessions = broker.sessionCounts()
        connectedSessions.record(sessions.connected)
        offlineSessions.record(sessions.offline)
        subscriptions.record(broker.subscriptions.snapshot.count)
        retained.record(broker.retained.count)
        if let pages = Self.residentPages() { residentMemory.record(pages * Int(sysconf(Int32(_SC_PAGESIZE)))) }
        if let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            openDescriptors.record(descriptors.count)
        }
        return registry.emitToBuffer()
    }

    /// The second field of /proc/self/statm: resident pages.
    private static func residentPages() -> Int? {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = statm.split(separator: " ")
        return fields.count > 1 ? Int(fields[1]) : nil
    }
}

/// `gatehouse_connects_total{method, result}` for one authentication method.
struct ConnectDecisionCounters {
    let accepted: CoreMetrics.Counter
    let refused: CoreMetrics.Counter

    init(method: String) {
        accepted = Counter(label: "gatehouse_connects_total", dimensions: [("method", method), ("result", "accepted")])
        refused = Counter(label: "gatehouse_connects_total", dimensions: [("method", method), ("result", "refused")])
    }
}

/// One method of the authentication chain, its decisions counted in
/// `gatehouse_connects_total{method, result}` (accepted or refused; skipped is not counted).
struct CountedAuthenticator: Authenticator {
    let authenticator: any Authenticator
    private let counters: ConnectDecisionCounters

    init(method: String, _ authenticator: any Authenticator) {
        self.authenticator = authenticator
        counters = ConnectDecisionCounters(method: method)
    }

    func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        count(await authenticator.authenticate(credentials))
    }

    func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        authenticator.authenticateImmediately(credentials).map(count)
    }

    private func count(_ outcome: AuthenticationOutcome) -> AuthenticationOutcome {
        switch outcome {
        case .accepted: counters.accepted.increment()
        case .rejected: counters.refused.increment()
        case .skipped: break
        }
        return outcome
    }
}

/// An MQTT 5 enhanced method, its outcomes counted in `gatehouse_connects_total{method, result}`
/// under the method's name (`SCRAM-SHA-256`, `GH-TOKEN`, …) however many AUTH rounds it took.
/// Re-authentications count too: each is a decision on a credential.
struct CountedEnhancedAuthenticator: EnhancedAuthenticator {
    let member: any EnhancedAuthenticator
    /// By the names the member answers; only those reach it.
    private let counters: [String: ConnectDecisionCounters]

    init(_ member: any EnhancedAuthenticator) {
        self.member = member
        counters = Dictionary(uniqueKeysWithValues: member.methods.map { ($0, ConnectDecisionCounters(method: $0)) })
    }

    var methods: Set<String> { member.methods }

    func start(method: String, data: [UInt8], credentials: ConnectCredentials) async -> EnhancedAuthenticationStep {
        Self.count(await member.start(method: method, data: data, credentials: credentials), counters[method])
    }

    /// Counts a final step; a challenge's continuation counts the step that ends the exchange.
    fileprivate static func count(
        _ step: EnhancedAuthenticationStep, _ counters: ConnectDecisionCounters?
    ) -> EnhancedAuthenticationStep {
        switch step {
        case .accepted: counters?.accepted.increment()
        case .rejected: counters?.refused.increment()
        case .challenge(let data, let next):
            return .challenge(data: data, next: Continuation(next: next, counters: counters))
        }
        return step
    }

    private struct Continuation: EnhancedAuthenticationContinuation {
        let next: any EnhancedAuthenticationContinuation
        let counters: ConnectDecisionCounters?

        func respond(_ data: [UInt8]) async -> EnhancedAuthenticationStep {
            CountedEnhancedAuthenticator.count(await next.respond(data), counters)
        }
    }
}
