public import GatehouseBroker
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
        public var listeners: [ListenAddress]
        public var limits: MQTTConnectionLimits

        public init(listeners: [ListenAddress], limits: MQTTConnectionLimits = MQTTConnectionLimits()) {
            self.listeners = listeners
            self.limits = limits
        }
    }

    private let configuration: Configuration
    private let broker: Broker
    /// Accepted connections, so that shutdown can wait for their DISCONNECTs to be written.
    private let openConnections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    private let group: any EventLoopGroup
    private let logger: Logger

    public init(configuration: Configuration, broker: Broker, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.broker = broker
        self.group = group
        self.logger = logger
    }

    public func run() async throws {
        var channels: [any Channel] = []
        do {
            for listener in configuration.listeners {
                let channel = try await bind(listener)
                channels.append(channel)
                let port = channel.localAddress?.port ?? listener.port
                logger.info("listening on \(ListenAddress(kind: listener.kind, host: listener.host, port: port))")
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        let listening = channels
        let broker = self.broker
        try await withGracefulShutdownHandler {
            for channel in listening { try await channel.closeFuture.get() }
        } onGracefulShutdown: {
            // Stop accepting first, then tell every client why it is being disconnected.
            for channel in listening { channel.close(promise: nil) }
            broker.disconnectAll(reason: .serverShuttingDown)
        }
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

    private func bind(_ listener: ListenAddress) async throws -> any Channel {
        let limits = configuration.limits
        let logger = self.logger
        let broker = self.broker
        let openConnections = self.openConnections
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator())
            .childChannelInitializer { channel in
                let key = ObjectIdentifier(channel)
                openConnections.withLockedValue { $0[key] = channel }
                channel.closeFuture.whenComplete { _ in openConnections.withLockedValue { $0[key] = nil } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureMQTTServerPipeline(
                        broker: broker, eventLoop: channel.eventLoop, limits: limits, logger: logger)
                }
            }
            .bind(host: listener.host, port: listener.port)
            .get()
    }
}
