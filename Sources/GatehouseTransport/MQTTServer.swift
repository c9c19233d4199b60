public import GatehouseBroker
public import GatehouseCertificates
public import Logging
import MQTTCore
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import ServiceLifecycle

/// The listeners of one broker, as a `Service`: `run()` binds them, serves until graceful
/// shutdown, then stops accepting. Only the executable owns the `ServiceGroup`.
public final class MQTTServer: Service {
    public struct Configuration: Sendable {
        public var listeners: [Listener]
        public var limits: MQTTConnectionLimits
        /// Certificates revoked while the broker runs, refused at the TLS handshake.
        public var liveRevocations: (any CertificateRevocationSource)?

        public init(
            listeners: [Listener], limits: MQTTConnectionLimits = MQTTConnectionLimits(),
            liveRevocations: (any CertificateRevocationSource)? = nil
        ) {
            self.listeners = listeners
            self.limits = limits
            self.liveRevocations = liveRevocations
        }
    }

    /// One listener: where it binds, for mqtts and wss its TLS files, and how many clients
    /// it holds at most (0: only the broker-wide limit applies).
    public struct Listener: Sendable, Equatable {
        public var address: ListenAddress
        public var tls: TLSSettings?
        public var maximumConnections: Int

        public init(address: ListenAddress, tls: TLSSettings? = nil, maximumConnections: Int = 0) {
            self.address = address
            self.tls = tls
            self.maximumConnections = maximumConnections
        }
    }

    private let configuration: Configuration
    private let broker: Broker
    /// Accepted connections, so that shutdown can wait for their DISCONNECTs to be written.
    private let openConnections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    /// Accepted connections that have not finished CONNECT, on every listener together.
    public let pendingConnects: PendingConnects
    private let bound = NIOLockedValueBox<[ListenAddress]>([])
    /// The listeners as bound (port 0 replaced by the port chosen), once `run` has bound them.
    public var boundListeners: [ListenAddress] { bound.withLockedValue { $0 } }
    private let group: any EventLoopGroup
    private let logger: Logger
    /// True while every listener is bound and accepting: what readiness reports.
    private let listening = NIOLockedValueBox(false)
    public var isListening: Bool { listening.withLockedValue { $0 } }
    /// One per TLS listener, in listener order, so that SIGHUP can swap their contexts.
    private let tlsContexts: [TLSContextHolder?]
    /// One per listener, in listener order.
    private let connections: [ListenerConnections]

    /// Each bound listener with its connected clients, for `gatehouse_connections_by_listener`.
    public var connectionsByListener: [(listener: ListenAddress, connected: Int)] {
        zip(boundListeners, connections).map { ($0, $1.count) }
    }

    /// Loads every TLS listener's files now, so that a broken file stops the start with its name.
    public init(
        configuration: Configuration, broker: Broker, group: any EventLoopGroup, logger: Logger
    ) throws(TLSSetupError) {
        self.configuration = configuration
        self.broker = broker
        self.group = group
        self.logger = logger
        self.pendingConnects = PendingConnects(limit: configuration.limits.maximumPendingConnects)
        var contexts: [TLSContextHolder?] = []
        for listener in configuration.listeners {
            guard let settings = listener.tls else {
                contexts.append(nil)
                continue
            }
            guard listener.address.kind.usesTLS else {
                throw TLSSetupError(
                    description: "listener \(listener.address) is not mqtts:// or wss:// but has TLS settings")
            }
            do {
                contexts.append(
                    TLSContextHolder(
                        try TLSServerContext.load(settings, liveRevocations: configuration.liveRevocations)))
            } catch {
                throw TLSSetupError(description: "listener \(listener.address): \(error.description)")
            }
        }
        for (listener, context) in zip(configuration.listeners, contexts)
        where listener.address.kind.usesTLS && context == nil {
            throw TLSSetupError(description: "listener \(listener.address) needs TLS settings")
        }
        self.tlsContexts = contexts
        self.connections = configuration.listeners.map { ListenerConnections(maximum: $0.maximumConnections) }
    }

    /// Re-reads every TLS listener's files (SIGHUP). A listener whose files fail keeps its old
    /// context; the error is logged. Returns whether every listener reloaded.
    @discardableResult
    public func reloadTLS() -> Bool {
        var allReloaded = true
        for (listener, holder) in zip(configuration.listeners, tlsContexts) {
            guard let holder else { continue }
            switch holder.reload() {
            case .success:
                logger.notice("TLS files reloaded", metadata: ["listener": "\(listener.address)"])
            case .failure(let error):
                allReloaded = false
                logger.error(
                    "TLS reload failed; the listener keeps its previous certificate",
                    metadata: ["listener": "\(listener.address)", "error": "\(error.description)"])
            }
        }
        return allReloaded
    }

    public func run() async throws {
        var channels: [any Channel] = []
        do {
            for ((listener, tls), connections) in zip(zip(configuration.listeners, tlsContexts), connections) {
                let channel = try await bind(listener.address, tls: tls, connections: connections)
                channels.append(channel)
                var address = listener.address
                address.port = channel.localAddress?.port ?? address.port
                bound.withLockedValue { $0.append(address) }
                logger.info("listening on \(address)")
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        let bound = channels
        let broker = self.broker
        listening.withLockedValue { $0 = true }
        try await withGracefulShutdownHandler {
            for channel in bound { try await channel.closeFuture.get() }
        } onGracefulShutdown: { [listening] in
            // Stop accepting first, then tell every client why it is being disconnected.
            listening.withLockedValue { $0 = false }
            for channel in bound { channel.close(promise: nil) }
            broker.disconnectAll(reason: .serverShuttingDown)
        }
        listening.withLockedValue { $0 = false }
        logger.info("listeners closed")
        await waitForConnectionsToClose(timeout: .seconds(3))
    }

    private func waitForConnectionsToClose(timeout: Duration) async {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let remaining = openConnections.withLockedValue { $0.count }
            if remaining == 0 { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        logger.warning(
            "connections still open at shutdown", metadata: ["count": "\(openConnections.withLockedValue { $0.count })"]
        )
    }

    private func bind(
        _ listener: ListenAddress, tls: TLSContextHolder?, connections: ListenerConnections
    ) async throws -> any Channel {
        let limits = configuration.limits
        var listenerLogger = self.logger
        listenerLogger[metadataKey: "listener"] = "\(listener.kind.rawValue)"
        let logger = listenerLogger
        let broker = self.broker
        let openConnections = self.openConnections
        let pendingConnects = self.pendingConnects
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A channel keeps its receive buffer while idle: start small (CONNECT and PINGREQ
            // are tiny) and let busy connections grow it.
            .childChannelOption(
                .recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 128, maximum: 65_536)
            )
            .childChannelInitializer { channel in
                let key = ObjectIdentifier(channel)
                openConnections.withLockedValue { $0[key] = channel }
                let pendingID = pendingConnects.accepted(channel)
                channel.closeFuture.whenComplete { _ in
                    openConnections.withLockedValue { $0[key] = nil }
                    pendingConnects.finished(pendingID)
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        PendingConnectHandler(pending: pendingConnects, id: pendingID))
                    try channel.pipeline.syncOperations.configureListenerPipeline(
                        channel: channel, listener: listener, tls: tls?.context, broker: broker, limits: limits,
                        connections: connections, logger: logger)
                }
            }
            .bind(host: listener.host, port: listener.port)
            .get()
    }
}
