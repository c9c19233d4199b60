public import GatehouseAuth
public import GatehouseBroker
public import Logging
import MQTTCore
public import NIOCore
import NIOHTTP1
import NIOSSL
import NIOWebSocket

/// Limits that shape every MQTT connection's pipeline.
public struct MQTTConnectionLimits: Sendable {
    /// Largest packet accepted, fixed header included; larger ones are refused from their
    /// fixed header, before the body is read.
    public var maximumPacketSize: Int
    /// Time a new connection has to send CONNECT (and, before that, to finish its TLS
    /// handshake or WebSocket upgrade).
    public var connectTimeout: TimeAmount
    /// Connections without a finished CONNECT at most; past it the oldest is closed. 0: no limit.
    public var maximumPendingConnects: Int

    public init(
        maximumPacketSize: Int = 1_048_576, connectTimeout: TimeAmount = .seconds(10),
        maximumPendingConnects: Int = 0
    ) {
        self.maximumPacketSize = maximumPacketSize
        self.connectTimeout = connectTimeout
        self.maximumPendingConnects = maximumPendingConnects
    }

    /// These limits with the connect timeout cut to what is left before `deadline`: the TLS
    /// handshake, the WebSocket upgrade and CONNECT share one budget from accept.
    func remaining(until deadline: NIODeadline, on eventLoop: any EventLoop) -> MQTTConnectionLimits {
        var limits = self
        limits.connectTimeout = max(.zero, deadline - eventLoop.now)
        return limits
    }
}

extension ChannelHandlerContext {
    /// Closes the connection at `deadline` unless the returned task is cancelled first, and
    /// logs why; for the stages before CONNECT.
    func closeConnection(
        at deadline: NIODeadline, logging message: Logger.Message, reason: String, with logger: ConnectionLogger
    ) -> Scheduled<Void> {
        eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            logger.info(message, metadata: ["reason": "\(reason)"])
            close(promise: nil)
        }
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The MQTT part of every pipeline: the connection handler, which frames the bytes itself.
    /// TLS and WebSocket handlers go in front of it, never inside.
    public func configureMQTTServerPipeline(
        broker: Broker,
        eventLoop: any EventLoop,
        limits: MQTTConnectionLimits,
        clientCertificate: ClientCertificate? = nil,
        connections: ListenerConnections? = nil,
        logger: Logger
    ) throws {
        try addHandler(
            BrokerConnectionHandler(
                broker: broker, eventLoop: eventLoop, connectTimeout: limits.connectTimeout,
                clientCertificate: clientCertificate, maximumPacketSize: limits.maximumPacketSize,
                listener: connections, logger: logger))
    }

    /// The whole pipeline of a connection accepted on `listener`: TLS (mqtts, wss), then the
    /// WebSocket upgrade (ws, wss), then MQTT.
    public func configureListenerPipeline(
        channel: any Channel,
        listener: ListenAddress,
        tls: TLSServerContext?,
        broker: Broker,
        limits: MQTTConnectionLimits,
        connections: ListenerConnections? = nil,
        logger: Logger
    ) throws {
        let eventLoop = self.eventLoop
        let path = listener.path
        let deadline = eventLoop.now + limits.connectTimeout
        let finish: (any Channel, ClientCertificate?) throws -> Void = { channel, certificate in
            if let path {
                try channel.pipeline.syncOperations.configureWebSocketUpgrade(
                    path: path, broker: broker, limits: limits, deadline: deadline, clientCertificate: certificate,
                    connections: connections, logger: logger)
            } else {
                try channel.pipeline.syncOperations.configureMQTTServerPipeline(
                    broker: broker, eventLoop: eventLoop, limits: limits.remaining(until: deadline, on: eventLoop),
                    clientCertificate: certificate, connections: connections, logger: logger)
            }
        }
        guard let tls else {
            try finish(channel, nil)
            return
        }
        let gate = TLSHandshakeHandler(
            verifier: tls.clientVerifier, deadline: deadline, logger: logger, onVerified: finish)
        // NIOSSL keeps its callback for the connection's life; the gate (and the certificate it
        // verified) should not outlive the handshake with it.
        try addHandler(
            NIOSSLServerHandler(
                context: tls.sslContext,
                customVerificationCallback: { [weak gate] chain, promise in
                    guard let gate else { return promise.succeed(.failed) }
                    gate.verifyClientChain(chain, promise)
                },
                configuration: Self.tlsHandlerConfiguration))
        try addHandler(gate)
    }

    /// Asks NIOSSL not to keep the handshake's 16 KB outbound buffer on idle connections, as
    /// OpenSSL's released buffers do not. swift-nio-ssl 2.37.6 ignores this setting (its
    /// `handlerAdded` passes `.max`); with that line patched locally it saved 4.3 KB per idle
    /// TLS connection.
    private static let tlsHandlerConfiguration = {
        var configuration = NIOSSLHandler.Configuration()
        configuration.maximumPreservedOutboundBufferCapacity = 0
        return configuration
    }()

    /// HTTP until a WebSocket upgrade to `path` with subprotocol `mqtt`, then MQTT in binary frames.
    func configureWebSocketUpgrade(
        path: String,
        broker: Broker,
        limits: MQTTConnectionLimits,
        deadline: NIODeadline,
        clientCertificate: ClientCertificate?,
        connections: ListenerConnections?,
        logger: Logger
    ) throws {
        // A frame may carry the largest packet plus the WebSocket header.
        let maxFrameSize = min(limits.maximumPacketSize + 14, Int(UInt32.max))
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maxFrameSize,
            automaticErrorHandling: true,
            shouldUpgrade: { channel, head in
                channel.eventLoop.makeSucceededFuture(MQTTWebSocketSubprotocol.upgradeHeaders(for: head, path: path))
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(MQTTWebSocketHandler(logger: logger))
                    try operations.configureMQTTServerPipeline(
                        broker: broker, eventLoop: channel.eventLoop,
                        limits: limits.remaining(until: deadline, on: channel.eventLoop),
                        clientCertificate: clientCertificate, connections: connections, logger: logger)
                }
            }
        )
        try configureHTTPServerPipeline(
            withServerUpgrade: (
                upgraders: [upgrader],
                completionHandler: { context in
                    context.pipeline.removeHandler(name: WebSocketRefusalHandler.name, promise: nil)
                }
            )
        )
        try addHandler(
            WebSocketRefusalHandler(path: path, deadline: deadline, logger: logger),
            name: WebSocketRefusalHandler.name)
    }
}
