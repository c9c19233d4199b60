import NIOCore
import NIOEmbedded
import Testing

@testable import GatehouseBroker

/// A connection as the wheel sees it: a keep-alive timeout and the time of its last packet.
private final class WatchedConnection: KeepAliveMember {
    let name: String
    var timeout: TimeAmount
    var lastPacketAt: NIODeadline
    var ended = false
    var keepAlivePosition: KeepAlivePosition?
    var onExpiry: (() -> Void)?
    private let expiries: ExpiryLog

    init(_ name: String, timeout: TimeAmount, at now: NIODeadline, log: ExpiryLog) {
        self.name = name
        self.timeout = timeout
        self.lastPacketAt = now
        self.expiries = log
    }

    var keepAliveDeadline: NIODeadline? { ended ? nil : lastPacketAt + timeout }

    func keepAliveExpired() {
        ended = true
        expiries.record(name, at: lastPacketAt + timeout)
        onExpiry?()
    }
}

private final class ExpiryLog {
    let loop: EmbeddedEventLoop
    /// Each expiry: who, and how late after its deadline the wheel noticed it.
    private(set) var entries: [(name: String, lateness: TimeAmount)] = []

    init(loop: EmbeddedEventLoop) { self.loop = loop }

    func record(_ name: String, at deadline: NIODeadline) { entries.append((name, loop.now - deadline)) }
    var names: [String] { entries.map(\.name) }
}

@Suite("keep-alive wheel")
struct KeepAliveWheelTests {
    private let loop = EmbeddedEventLoop()

    private func connection(_ name: String, seconds: Int64, log: ExpiryLog) -> WatchedConnection {
        WatchedConnection(name, timeout: .seconds(seconds), at: loop.now, log: log)
    }

    @Test("each connection expires once, within a tick after its deadline, in deadline order")
    func expiresInOrder() {
        let log = ExpiryLog(loop: loop)
        let wheel = KeepAliveWheel<WatchedConnection>(eventLoop: loop)
        let connections = [("b", 3), ("a", 1), ("c", 200)].map { connection($0.0, seconds: Int64($0.1), log: log) }
        for each in connections { wheel.watch(each) }
        #expect(wheel.count == 3)
        loop.advanceTime(by: .milliseconds(900))
        #expect(log.names.isEmpty)
        loop.advanceTime(by: .seconds(3))
        #expect(log.names == ["a", "b"])
        // 200 s is past the wheel's 128 s horizon: it waits there and is filed again.
        loop.advanceTime(by: .seconds(195))
        #expect(log.names == ["a", "b"])
        loop.advanceTime(by: .seconds(2))
        #expect(log.names == ["a", "b", "c"])
        for entry in log.entries {
            #expect(entry.lateness >= .zero && entry.lateness <= KeepAliveWheel<WatchedConnection>.tick)
        }
        #expect(wheel.count == 0)
    }

    @Test("a packet before the deadline moves it on, without touching the wheel")
    func packetsMoveTheDeadline() {
        let log = ExpiryLog(loop: loop)
        let wheel = KeepAliveWheel<WatchedConnection>(eventLoop: loop)
        let busy = connection("busy", seconds: 1, log: log)
        wheel.watch(busy)
        for _ in 0..<10 {
            loop.advanceTime(by: .milliseconds(700))
            busy.lastPacketAt = loop.now
        }
        #expect(log.names.isEmpty)
        loop.advanceTime(by: .milliseconds(1_300))
        #expect(log.names == ["busy"])
    }

    @Test("removed connections never expire; the wheel keeps no timer without members")
    func removal() {
        let log = ExpiryLog(loop: loop)
        let wheel = KeepAliveWheel<WatchedConnection>(eventLoop: loop)
        let group = (0..<5).map { connection("c\($0)", seconds: 2, log: log) }
        for each in group { wheel.watch(each) }
        // Removing from the middle of a slot moves its last member into the gap.
        wheel.remove(group[1])
        wheel.remove(group[4])
        wheel.remove(group[4])
        #expect(wheel.count == 3)
        #expect(group[0].keepAlivePosition != nil && group[1].keepAlivePosition == nil)
        loop.advanceTime(by: .seconds(3))
        #expect(Set(log.names) == ["c0", "c2", "c3"])
        for each in group { wheel.remove(each) }
        #expect(wheel.count == 0)
        // Watching again after the wheel went idle starts it again.
        let late = connection("late", seconds: 1, log: log)
        wheel.watch(late)
        loop.advanceTime(by: .seconds(2))
        #expect(log.names.last == "late")
    }

    @Test("an expiry that ends or re-watches another due connection leaves the wheel consistent")
    func expiryWithSideEffects() {
        let log = ExpiryLog(loop: loop)
        let wheel = KeepAliveWheel<WatchedConnection>(eventLoop: loop)
        let first = connection("first", seconds: 1, log: log)
        let ended = connection("ended", seconds: 1, log: log)
        let renewed = connection("renewed", seconds: 1, log: log)
        for each in [first, ended, renewed] { wheel.watch(each) }
        // A session takeover, say: the first expiry ends one connection and renews another.
        first.onExpiry = {
            ended.ended = true
            wheel.remove(ended)
            renewed.lastPacketAt = self.loop.now
            wheel.watch(renewed)
        }
        loop.advanceTime(by: .milliseconds(1_250))
        #expect(log.names == ["first"])
        #expect(wheel.count == 1)
        loop.advanceTime(by: .seconds(2))
        #expect(log.names == ["first", "renewed"])
        #expect(wheel.count == 0)
    }
}
