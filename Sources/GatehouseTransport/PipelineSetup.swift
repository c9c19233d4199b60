public import GatehouseBroker
public import Logging
import MQTTCore
public import NIOCore

/// Limits that shape every MQTT connection's pipeline.
public struct MQTTConnectionLimits: Sendable {
    /// Largest packet accepted, fixed header included; larger ones are refused from their
    /// fixed header, before the body is read.
    public var maximumPacketSize: Int
    /// Time a new connection has to send CONNECT.
    public var connectTimeout: TimeAmount

    public init(maximumPacketSize: Int = 1_048_576, connectTimeout: TimeAmount = .seconds(10)) {
        self.maximumPacketSize = maximumPacketSize
        self.connectTimeout = connectTimeout
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The one place the server pipeline is built: frame decoder, then the connection handler.
    /// TLS and WebSocket handlers go in front of it, never inside.
    public func configureMQTTServerPipeline(
        broker: Broker,
        eventLoop: any EventLoop,
        limits: MQTTConnectionLimits,
        logger: Logger
    ) throws {
        try addHandler(ByteToMessageHandler(MQTTFrameDecoder(maximumPacketSize: limits.maximumPacketSize)))
        try addHandler(
            BrokerConnectionHandler(
                broker: broker, eventLoop: eventLoop, connectTimeout: limits.connectTimeout, logger: logger))
    }
}
