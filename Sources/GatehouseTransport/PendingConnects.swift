public import GatehouseBroker
import NIOConcurrencyHelpers
public import NIOCore

/// Connections accepted that have not finished CONNECT (TLS handshake and WebSocket upgrade
/// included). Past `limit` the oldest is closed, so that sockets opened and left silent (a scan,
/// a flood) cannot hold the broker's descriptors and memory until their connect timeouts while
/// real clients wait.
public final class PendingConnects: Sendable {
    private struct State {
        var nextID: UInt64 = 0
        /// In order of acceptance; entries of connections no longer pending are skipped when met.
        var order = CircularBuffer<(id: UInt64, channel: any Channel)>()
        var pending: Set<UInt64> = []
        var closed = 0
    }

    let limit: Int
    private let state = NIOLockedValueBox(State())

    /// 0 for no limit.
    public init(limit: Int) {
        self.limit = limit
    }

    /// Connections closed because the limit was reached.
    public var closedAtLimit: Int { state.withLockedValue { $0.closed } }

    public var count: Int { state.withLockedValue { $0.pending.count } }

    /// Registers a new connection; returns its id for `finished`. Closes the oldest pending one
    /// if there are now too many.
    func accepted(_ channel: any Channel) -> UInt64 {
        let (id, evicted) = state.withLockedValue { state -> (UInt64, (any Channel)?) in
            let id = state.nextID
            state.nextID += 1
            state.order.append((id, channel))
            state.pending.insert(id)
            var evicted: (any Channel)?
            if limit > 0 && state.pending.count > limit {
                while let oldest = state.order.popFirst() {
                    guard state.pending.remove(oldest.id) != nil else { continue }
                    evicted = oldest.channel
                    state.closed += 1
                    break
                }
            }
            // Finished entries wait in `order` until met; do not let them pile up.
            if state.order.count > 2 * state.pending.count + 64 {
                state.order = CircularBuffer(state.order.filter { state.pending.contains($0.id) })
            }
            return (id, evicted)
        }
        evicted?.close(promise: nil)
        return id
    }

    /// The connection finished CONNECT, or closed.
    func finished(_ id: UInt64) {
        state.withLockedValue { _ = $0.pending.remove(id) }
    }
}

/// The first handler of every accepted connection: takes it out of `PendingConnects` once the
/// connection handler says CONNECT was accepted, then leaves the pipeline.
final class PendingConnectHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    private let pending: PendingConnects
    private let id: UInt64

    init(pending: PendingConnects, id: UInt64) {
        self.pending = pending
        self.id = id
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is MQTTConnectAccepted else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        pending.finished(id)
        promise?.succeed()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
