import GatehouseAuth
import NIOConcurrencyHelpers
import NIOCore

/// Token buckets per address and per client id for the token endpoint: a client stuck in a
/// retry loop, or a guesser, slows down without slowing the others.
final class TokenRateLimiter: Sendable {
    private let perAddress: Double
    private let perClient: Double
    private let buckets = NIOLockedValueBox<[String: TokenBucket]>([:])

    init(perAddress: Double, perClient: Double) {
        self.perAddress = perAddress
        self.perClient = perClient
    }

    /// Whether one more request from `address` for `client` may go ahead now.
    func admit(address: String?, client: String?) -> Bool {
        let now = NIODeadline.now().uptimeNanoseconds
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
    private static func take(_ buckets: inout [String: TokenBucket], _ key: String, rate: Double, now: UInt64) -> Bool {
        var bucket = buckets[key] ?? TokenBucket(rate: rate, capacity: rate * 2, now: now)
        let admitted = bucket.take(now: now)
        buckets[key] = bucket
        return admitted
    }
}
