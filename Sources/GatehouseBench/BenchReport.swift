import Foundation
import MQTTCore

extension BenchCounts {
    /// The counters' increase since `earlier`; latencies are kept whole (they are recorded only
    /// once publishing starts, and connect latency belongs to the setup).
    func minus(_ earlier: BenchCounts) -> BenchCounts {
        var window = self
        window.connected -= earlier.connected
        window.connectFailures -= earlier.connectFailures
        window.disconnects -= earlier.disconnects
        window.windowResets -= earlier.windowResets
        window.published -= earlier.published
        window.acknowledged -= earlier.acknowledged
        window.refused -= earlier.refused
        window.received -= earlier.received
        return window
    }
}

/// What a run measured: rates over the measured window, totals after the drain, and the
/// problems that make `gatehouse bench` exit non-zero.
public struct BenchSummary: Sendable {
    public let plan: BenchPlan
    public let clients: Int
    public let expectedClients: Int
    public let connectSeconds: Double
    /// The measured window: from the publishers' start to the end of the duration.
    public let seconds: Double
    public let window: BenchCounts
    public let total: BenchCounts
    /// Deliveries every subscriber should have had, when that is known.
    public let expectedDeliveries: Int?

    public var publishRate: Double { seconds > 0 ? Double(window.published) / seconds : 0 }
    public var receiveRate: Double { seconds > 0 ? Double(window.received) / seconds : 0 }

    /// Only QoS 1/2 promise delivery; QoS 0 losses are reported, not failed.
    public var lost: Int? { expectedDeliveries.map { max(0, $0 - total.received) } }

    public var problems: [String] {
        var problems: [String] = []
        if clients < expectedClients { problems.append("\(expectedClients - clients) clients did not connect") }
        if total.disconnects > 0 { problems.append("\(total.disconnects) clients were disconnected by the broker") }
        if total.refused > 0 { problems.append("\(total.refused) publishes were refused") }
        if plan.qos != .atMostOnce, let lost, lost > 0 {
            problems.append("\(lost) QoS \(plan.qos.rawValue) messages lost")
        }
        return problems
    }

    public var text: String {
        var lines = [
            String(
                format: "%@: %d of %d clients (connected in %.2f s), %.2f s measured", plan.scenario.rawValue,
                clients, expectedClients, connectSeconds, seconds)
        ]
        if plan.publisherCount > 0 {
            var line = String(format: "published   %10d  %12.0f msg/s", window.published, publishRate)
            if plan.qos != .atMostOnce { line += "  (acknowledged \(total.acknowledged), refused \(total.refused))" }
            lines.append(line)
        }
        if plan.subscriberCount > 0 {
            var line = String(format: "received    %10d  %12.0f msg/s", window.received, receiveRate)
            if let lost { line += "  (lost \(lost) of \(expectedDeliveries ?? 0))" }
            lines.append(line)
        }
        let latencies: [(String, LatencyHistogram)] = [
            ("connect", total.connectLatency), ("delivery", total.deliveryLatency),
            ("acknowledgement", total.acknowledgementLatency),
        ]
        lines.append(
            String(format: "%-17@ %9@ %9@ %9@ %9@ %9@", "latency (ms)", "p50", "p90", "p99", "max", "count"))
        for (name, histogram) in latencies where !histogram.isEmpty {
            lines.append(
                String(
                    format: "  %-15@ %9.3f %9.3f %9.3f %9.3f %9d", name,
                    Self.milliseconds(histogram.value(atQuantile: 0.5)),
                    Self.milliseconds(histogram.value(atQuantile: 0.9)),
                    Self.milliseconds(histogram.value(atQuantile: 0.99)), Self.milliseconds(histogram.maximum),
                    histogram.count))
        }
        for (reason, count) in total.errors.sorted(by: { $0.value > $1.value }) {
            lines.append("error: \(reason) (×\(count))")
        }
        return lines.joined(separator: "\n")
    }

    /// One JSON object, for scripts (`--json`).
    public var json: String {
        var object: [String: Any] = [
            "scenario": plan.scenario.rawValue, "clients": clients, "expected_clients": expectedClients,
            "connect_seconds": connectSeconds, "seconds": seconds, "published": window.published,
            "received": window.received, "publish_rate": publishRate, "receive_rate": receiveRate,
            "acknowledged": total.acknowledged, "refused": total.refused, "connect_failures": total.connectFailures,
            "disconnects": total.disconnects, "window_resets": total.windowResets, "errors": total.errors,
            "problems": problems,
            "total_published": total.published, "total_received": total.received,
        ]
        if let lost { object["lost"] = lost }
        var latency: [String: Any] = [:]
        for (name, histogram) in [
            ("connect", total.connectLatency), ("delivery", total.deliveryLatency),
            ("acknowledgement", total.acknowledgementLatency),
        ] where !histogram.isEmpty {
            latency[name] = [
                "p50": Self.milliseconds(histogram.value(atQuantile: 0.5)),
                "p90": Self.milliseconds(histogram.value(atQuantile: 0.9)),
                "p99": Self.milliseconds(histogram.value(atQuantile: 0.99)),
                "max": Self.milliseconds(histogram.maximum), "count": histogram.count,
            ]
        }
        object["latency_ms"] = latency
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    static func milliseconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1e6 }
}

enum BenchReport {
    /// `  3s  clients 11  pub 54321/s  ack 54300/s  recv 54290/s  delivery p99 1.840 ms`
    static func progressLine(elapsed: Double, counts: BenchCounts, previous: BenchCounts, interval: Double)
        -> String
    {
        func rate(_ now: Int, _ before: Int) -> Int { interval > 0 ? Int(Double(now - before) / interval) : 0 }
        var line = String(format: "%5.0fs  clients %d", elapsed, counts.connected - counts.disconnects)
        if counts.published > 0 { line += "  pub \(rate(counts.published, previous.published))/s" }
        if counts.acknowledged + counts.refused > 0 {
            line += "  ack \(rate(counts.acknowledged, previous.acknowledged))/s"
        }
        if counts.received > 0 { line += "  recv \(rate(counts.received, previous.received))/s" }
        if !counts.deliveryLatency.isEmpty {
            line += String(
                format: "  delivery p99 %.3f ms",
                BenchSummary.milliseconds(counts.deliveryLatency.value(atQuantile: 0.99)))
        }
        let errors = counts.errors.values.reduce(0, +)
        if errors > 0 { line += "  errors \(errors)" }
        return line
    }
}
