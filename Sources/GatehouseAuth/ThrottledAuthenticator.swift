import Synchronization

/// Slows down sources of failed attempts: after each failure from a remote address, or for a
/// user name, the next attempt from it waits twice as long (from `base` up to `maximum`)
/// before it is even checked. A success clears both; a quiet `forgetAfter` forgets them.
public final class ThrottledAuthenticator: Authenticator {
    public struct Backoff: Sendable {
        public var base: Duration
        public var maximum: Duration
        public var forgetAfter: Duration

        public init(
            base: Duration = .milliseconds(100), maximum: Duration = .seconds(30), forgetAfter: Duration = .seconds(900)
        ) {
            self.base = base
            self.maximum = maximum
            self.forgetAfter = forgetAfter
        }
    }

    private struct Failures {
        var count: Int
        var last: ContinuousClock.Instant
    }

    private let inner: any Authenticator
    private let backoff: Backoff
    private struct Record {
        var table: [String: Failures] = [:]
        /// The latest failure of all: once it is forgotten, so is every entry.
        var newest = ContinuousClock.Instant.now
    }

    private let failures = Mutex(Record())
    /// Bounds the memory an attacker with many addresses can make the table use.
    private let maximumEntries = 100_000

    public init(_ inner: any Authenticator, backoff: Backoff = Backoff()) {
        self.inner = inner
        self.backoff = backoff
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        let keys = Self.keys(credentials)
        let wait = delay(for: keys)
        if wait > .zero { try? await Task.sleep(for: wait) }
        let outcome = await inner.authenticate(credentials)
        record(keys, success: { if case .accepted = outcome { true } else { false } }())
        return outcome
    }

    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        // With no failure on record (the usual case) an accept needs no keys and no second lock.
        if nothingOnRecord() {
            guard let outcome = inner.authenticateImmediately(credentials) else { return nil }
            if case .accepted = outcome { return outcome }
            record(Self.keys(credentials), success: false)
            return outcome
        }
        let keys = Self.keys(credentials)
        guard delay(for: keys) == .zero, let outcome = inner.authenticateImmediately(credentials) else { return nil }
        record(keys, success: { if case .accepted = outcome { true } else { false } }())
        return outcome
    }

    /// Whether no failure is remembered; forgets them all once the newest is old enough, so
    /// that one failure long ago does not keep every later CONNECT off the fast path.
    private func nothingOnRecord() -> Bool {
        failures.withLock { record in
            if !record.table.isEmpty, ContinuousClock.now - record.newest >= backoff.forgetAfter {
                record.table.removeAll()
            }
            return record.table.isEmpty
        }
    }

    /// How long the next attempt with these credentials would wait now.
    public func delay(for credentials: ConnectCredentials) -> Duration { delay(for: Self.keys(credentials)) }

    /// Records the outcome of an attempt made elsewhere (an enhanced exchange).
    public func record(_ credentials: ConnectCredentials, success: Bool) {
        record(Self.keys(credentials), success: success)
    }

    private static func keys(_ credentials: ConnectCredentials) -> [String] {
        var keys: [String] = []
        if let address = credentials.remoteAddress { keys.append("address:\(address)") }
        if let username = credentials.username, !username.isEmpty { keys.append("user:\(username)") }
        return keys
    }

    private func delay(for keys: [String]) -> Duration {
        let now = ContinuousClock.now
        let count = failures.withLock { record in
            keys.compactMap { key in
                record.table[key].flatMap { now - $0.last < backoff.forgetAfter ? $0.count : nil }
            }.max() ?? 0
        }
        guard count > 0 else { return .zero }
        let doubled = backoff.base * Double(1 << min(count - 1, 20))
        return min(doubled, backoff.maximum)
    }

    private func record(_ keys: [String], success: Bool) {
        let now = ContinuousClock.now
        failures.withLock { record in
            for key in keys {
                if success {
                    record.table[key] = nil
                } else {
                    let previous =
                        record.table[key].flatMap { now - $0.last < backoff.forgetAfter ? $0.count : nil } ?? 0
                    record.table[key] = Failures(count: previous + 1, last: now)
                    record.newest = now
                }
            }
            if record.table.count > maximumEntries {
                record.table = record.table.filter { now - $0.value.last < backoff.forgetAfter }
                if record.table.count > maximumEntries { record.table.removeAll() }
            }
        }
    }
}

/// Enhanced authentication behind the same back-off as the password methods: an address (or
/// CONNECT user name) that failed waits before its next exchange starts, and the exchange's end
/// is recorded. A SCRAM guesser gets no more tries per second than a password guesser.
public struct ThrottledEnhancedAuthenticator: EnhancedAuthenticator {
    let inner: any EnhancedAuthenticator
    let throttle: ThrottledAuthenticator

    public init(_ inner: any EnhancedAuthenticator, sharing throttle: ThrottledAuthenticator) {
        self.inner = inner
        self.throttle = throttle
    }

    public var methods: Set<String> { inner.methods }

    public func start(method: String, data: [UInt8], credentials: ConnectCredentials) async
        -> EnhancedAuthenticationStep
    {
        let wait = throttle.delay(for: credentials)
        if wait > .zero { try? await Task.sleep(for: wait) }
        return Self.recording(
            await inner.start(method: method, data: data, credentials: credentials), credentials, throttle)
    }

    fileprivate static func recording(
        _ step: EnhancedAuthenticationStep, _ credentials: ConnectCredentials, _ throttle: ThrottledAuthenticator
    ) -> EnhancedAuthenticationStep {
        switch step {
        case .challenge(let data, let next):
            return .challenge(data: data, next: Recorded(inner: next, credentials: credentials, throttle: throttle))
        case .accepted:
            throttle.record(credentials, success: true)
        case .rejected:
            throttle.record(credentials, success: false)
        }
        return step
    }

    private struct Recorded: EnhancedAuthenticationContinuation {
        let inner: any EnhancedAuthenticationContinuation
        let credentials: ConnectCredentials
        let throttle: ThrottledAuthenticator

        func respond(_ data: [UInt8]) async -> EnhancedAuthenticationStep {
            ThrottledEnhancedAuthenticator.recording(await inner.respond(data), credentials, throttle)
        }
    }
}
