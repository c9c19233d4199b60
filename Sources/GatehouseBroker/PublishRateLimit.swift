import GatehouseAuth
public import NIOCore

/// One client's publish rate against its limits, as token buckets that hold one second's
/// worth: a client may burst up to the rate, and is refused once it keeps above it. A class,
/// so that the connections without limits carry only an empty reference.
final class PublishRateLimit {
    private var messages: TokenBucket?
    private var bytes: TokenBucket?

    /// 0 for no limit; nil when neither is set, so that unlimited connections pay nothing.
    init?(messagesPerSecond: Int, bytesPerSecond: Int, now: NIODeadline) {
        guard messagesPerSecond > 0 || bytesPerSecond > 0 else { return nil }
        let start = now.uptimeNanoseconds
        func bucket(_ rate: Int) -> TokenBucket? {
            rate > 0 ? TokenBucket(rate: Double(rate), capacity: Double(rate), now: start) : nil
        }
        messages = bucket(messagesPerSecond)
        bytes = bucket(bytesPerSecond)
    }

    /// Whether a PUBLISH of `size` payload bytes at `now` stays within both limits.
    func admit(size: Int, now: NIODeadline) -> Bool {
        let at = now.uptimeNanoseconds
        let withinMessages = messages?.take(now: at) ?? true
        let withinBytes = bytes?.take(Double(size), now: at) ?? true
        return withinMessages && withinBytes
    }
}
