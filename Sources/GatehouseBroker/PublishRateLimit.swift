public import NIOCore

/// One client's publish rate against its limits, as token buckets that hold one second's
/// worth: a client may burst up to the rate, and is refused once it keeps above it.
struct PublishRateLimit {
    private struct Bucket {
        let rate: Double
        var tokens: Double

        init(rate: Int) {
            self.rate = Double(rate)
            self.tokens = Double(rate)
        }

        mutating func take(_ amount: Double, after elapsed: Double) -> Bool {
            tokens = min(rate, tokens + elapsed * rate)
            guard tokens >= amount else { return false }
            tokens -= amount
            return true
        }
    }

    private var messages: Bucket?
    private var bytes: Bucket?
    private var last: NIODeadline

    /// 0 for no limit; nil when neither is set, so that unlimited connections pay nothing.
    init?(messagesPerSecond: Int, bytesPerSecond: Int, now: NIODeadline) {
        guard messagesPerSecond > 0 || bytesPerSecond > 0 else { return nil }
        messages = messagesPerSecond > 0 ? Bucket(rate: messagesPerSecond) : nil
        bytes = bytesPerSecond > 0 ? Bucket(rate: bytesPerSecond) : nil
        last = now
    }

    /// Whether a PUBLISH of `size` payload bytes at `now` stays within both limits.
    mutating func admit(size: Int, now: NIODeadline) -> Bool {
        let elapsed = Double(max(0, (now - last).nanoseconds)) / 1e9
        last = now
        var within = true
        if var bucket = messages {
            within = bucket.take(1, after: elapsed)
            messages = bucket
        }
        if var bucket = bytes {
            within = bucket.take(Double(size), after: elapsed) && within
            bytes = bucket
        }
        return within
    }
}
