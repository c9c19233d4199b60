public import Logging
public import NIOCore

/// A connection's logger. Its remote address and client id are added only to the messages
/// actually written: setting a `Logger`'s metadata makes the stream handler render all of it
/// again, which cost more per CONNECT than the rest of the handler's bookkeeping.
public struct ConnectionLogger: Sendable {
    public var base: Logger
    public var remote: SocketAddress?
    public var clientID: String?

    public init(_ base: Logger, remote: SocketAddress? = nil) {
        self.base = base
        self.remote = remote
    }

    public func log(
        _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata = [:]
    ) {
        guard level >= base.logLevel else { return }
        var merged = metadata()
        if let remote { merged["remote"] = "\(remote)" }
        if let clientID { merged["client_id"] = "\(clientID)" }
        base.log(level: level, message(), metadata: merged)
    }

    public func debug(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:])
    {
        log(.debug, message(), metadata: metadata())
    }

    public func info(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        log(.info, message(), metadata: metadata())
    }

    public func notice(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:])
    {
        log(.notice, message(), metadata: metadata())
    }

    public func error(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:])
    {
        log(.error, message(), metadata: metadata())
    }
}
