import NIOConcurrencyHelpers

/// Token buckets per address and per client id for the token endpoint: a client stuck in a
/// retry loop, or a guesser, slows down without slowing the others.
final class TokenRateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private let perAddress: Double
    private let perClient: Double
    private let buckets = NIOLockedValueBox<[String: Bucket]>([:])

    init(perAddress: Double, perClient: Double) {
        self.perAddress = perAddress
        self.perClient = perClient
    }

    /// Whether one more request from `address` for `client` may go ahead now.
    func admit(address: String?, client: String?) -> Bool {
        let now = ContinuousClock.now
        return buckets.withLockedValue { buckets in
            // Forget idle buckets now and then, so that many addresses cannot grow the table.
            if buckets.count > 50_000 { buckets.removeAll() }
            var admitted = true
            if perAddress > 0, let address {
                admitted = Self.take(&buckets, "a:" + address, rate: perAddress, now: now) && admitted
            }
            if perClient > 0, let client {
                admitted = Self.take(&buckets, "c:" + client, rate: perClient, now: now) && admitted
            }
            return admitted
        }
    }

    /// A burst of twice the rate, refilled continuously.
    private static func take(
        _ buckets: inout [String: Bucket], _ key: String, rate: Double, now: ContinuousClock.Instant
    )
        -> Bool
    {
        var bucket = buckets[key] ?? Bucket(tokens: rate * 2, updated: now)
        let elapsed = now - bucket.updated
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        bucket.tokens = min(rate * 2, bucket.tokens + seconds * rate)
        bucket.updated = now
        let admitted = bucket.tokens >= 1
        if admitted { bucket.tokens -= 1 }
        buckets[key] = bucket
        return admitted
    }
}
