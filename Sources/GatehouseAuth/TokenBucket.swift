/// A token bucket on a monotonic clock in nanoseconds: at most `capacity` tokens, refilled
/// continuously at `rate` a second. What the broker's publish limits and the token endpoint's
/// request limits both count with.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let capacity: Double
    private var tokens: Double
    private var updated: UInt64

    /// Starts full.
    public init(rate: Double, capacity: Double, now: UInt64) {
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now
    }

    /// Takes `amount` tokens if there are that many at `now`.
    public mutating func take(_ amount: Double = 1, now: UInt64) -> Bool {
        if now > updated {
            tokens = min(capacity, tokens + Double(now - updated) / 1e9 * rate)
            updated = now
        }
        guard tokens >= amount else { return false }
        tokens -= amount
        return true
    }
}
