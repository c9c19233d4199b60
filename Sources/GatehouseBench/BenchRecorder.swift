import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// CLOCK_MONOTONIC in nanoseconds: the clock the payload's timestamp is read on, shared by
/// every process on the machine (so `bench pub` and `bench sub` measure together, and
/// `mqttload`'s payloads read the same way).
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// What the clients of a run have counted so far.
public struct BenchCounts: Sendable, Equatable {
    public var connected = 0
    /// Connections refused, lost or timed out, with the reasons heard.
    public var connectFailures = 0
    public var disconnects = 0
    public var published = 0
    /// QoS 1/2 publishes the broker acknowledged with success.
    public var acknowledged = 0
    /// QoS 1/2 publishes the broker refused (a reason code of 0x80 or above).
    public var refused = 0
    public var received = 0
    /// Times a pubsub publisher's delivery window stayed shut for a second and was started afresh.
    public var windowResets = 0
    public var errors: [String: Int] = [:]
    /// TCP connect to CONNACK (and SUBACK for subscribers).
    public var connectLatency = LatencyHistogram()
    /// Publish to delivery, from the payload's timestamp.
    public var deliveryLatency = LatencyHistogram()
    /// Publish to PUBACK / PUBCOMP.
    public var acknowledgementLatency = LatencyHistogram()

    public init() {}

    mutating func merge(_ other: BenchCounts) {
        connected += other.connected
        connectFailures += other.connectFailures
        disconnects += other.disconnects
        published += other.published
        acknowledged += other.acknowledged
        refused += other.refused
        received += other.received
        windowResets += other.windowResets
        errors.merge(other.errors, uniquingKeysWith: +)
        connectLatency.merge(other.connectLatency)
        deliveryLatency.merge(other.deliveryLatency)
        acknowledgementLatency.merge(other.acknowledgementLatency)
    }

    mutating func error(_ reason: String) { errors[reason, default: 0] += 1 }
}

/// The counts of the clients on one event loop. Only that loop records, so the lock is
/// uncontended except when the reporter reads, once a second.
final class BenchRecorder: Sendable {
    private let counts = Mutex(BenchCounts())

    func record(_ update: (inout BenchCounts) -> Void) { counts.withLock { update(&$0) } }

    var snapshot: BenchCounts { counts.withLock { $0 } }

    static func total(_ recorders: [BenchRecorder]) -> BenchCounts {
        var total = BenchCounts()
        for recorder in recorders { total.merge(recorder.snapshot) }
        return total
    }
}
