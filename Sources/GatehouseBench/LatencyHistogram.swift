/// Latencies in nanoseconds, in log-linear buckets: 64 linear buckets per power of two, so a
/// reported percentile is within 1/64 (1.6%) of the true value, at a fixed 4 KiB whatever the
/// range (1 ns to 2^63 ns).
public struct LatencyHistogram: Sendable, Equatable {
    static let subBucketBits = 6
    static let subBuckets = 1 << subBucketBits
    private var counts: [UInt64]
    public private(set) var count: UInt64 = 0
    public private(set) var maximum: UInt64 = 0
    public private(set) var minimum: UInt64 = .max
    private var sum: UInt64 = 0

    public init() {
        counts = Array(repeating: 0, count: (64 - Self.subBucketBits + 1) * Self.subBuckets)
    }

    public var isEmpty: Bool { count == 0 }
    public var mean: Double { count == 0 ? 0 : Double(sum) / Double(count) }

    public mutating func record(_ nanoseconds: UInt64) {
        counts[Self.bucket(of: nanoseconds)] += 1
        count += 1
        sum &+= nanoseconds
        maximum = max(maximum, nanoseconds)
        minimum = min(minimum, nanoseconds)
    }

    public mutating func merge(_ other: LatencyHistogram) {
        guard !other.isEmpty else { return }
        for index in counts.indices where other.counts[index] != 0 { counts[index] += other.counts[index] }
        count += other.count
        sum &+= other.sum
        maximum = max(maximum, other.maximum)
        minimum = min(minimum, other.minimum)
    }

    /// The smallest recorded value at or above the fraction `quantile` (0...1) of the
    /// recordings, as its bucket's upper edge (never above the maximum); 0 when empty.
    public func value(atQuantile quantile: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = max(1, UInt64((Double(count) * min(max(quantile, 0), 1)).rounded(.up)))
        var seen: UInt64 = 0
        for (index, bucketCount) in counts.enumerated() where bucketCount != 0 {
            seen += bucketCount
            if seen >= rank { return min(Self.upperEdge(of: index), maximum) }
        }
        return maximum
    }

    /// Values below 64 have a bucket each; above, the top set bit picks a power of two and the
    /// next six bits a sixty-fourth of it.
    static func bucket(of value: UInt64) -> Int {
        guard value >= UInt64(subBuckets) else { return Int(value) }
        let topBit = 63 - value.leadingZeroBitCount
        let shift = topBit - subBucketBits
        let subBucket = Int((value >> UInt64(shift)) & UInt64(subBuckets - 1))
        return (shift + 1) * subBuckets + subBucket
    }

    static func upperEdge(of bucket: Int) -> UInt64 {
        guard bucket >= subBuckets else { return UInt64(bucket) }
        let shift = bucket / subBuckets - 1
        let subBucket = UInt64(bucket % subBuckets)
        let lower = (UInt64(subBuckets) + subBucket) << UInt64(shift)
        return lower + ((1 << UInt64(shift)) - 1)
    }
}
