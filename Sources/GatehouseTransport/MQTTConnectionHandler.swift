import GatehouseBroker
import Logging
import MQTTCore
import NIOCore

/// Performs what the connection's state machine decides; owns no protocol logic itself.
final class MQTTConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    private var stateMachine = ConnectionStateMachine()
    private let connectTimeout: TimeAmount
    private var connectTimeoutTask: Scheduled<Void>?
    private var logger: Logger

    init(connectTimeout: TimeAmount, logger: Logger) {
        self.connectTimeout = connectTimeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if let remote = context.remoteAddress { logger[metadataKey: "remote"] = "\(remote)" }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        connectTimeoutTask = context.eventLoop.scheduleTask(in: connectTimeout) {
            let (handler, context) = loopBound.value
            handler.logger.debug("no CONNECT within the connect timeout")
            handler.perform(handler.stateMachine.connectTimeoutElapsed(), context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        connectTimeoutTask?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let packet = unwrapInboundIn(data)
        if case .connect(let connect) = packet {
            connectTimeoutTask?.cancel()
            logger.info(
                "refusing CONNECT: sessions are not available yet",
                metadata: ["client_id": "\(connect.clientIdentifier)", "version": "\(connect.protocolVersion)"]
            )
        }
        perform(stateMachine.packetReceived(packet), context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let violation = error as? MQTTProtocolViolation else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        logger.info("protocol violation", metadata: ["violation": "\(violation)", "reason": "\(violation.reasonCode)"])
        perform(stateMachine.decodingFailed(violation), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stateMachine.connectionClosed()
        connectTimeoutTask?.cancel()
        context.fireChannelInactive()
    }

    private func perform(_ action: ConnectionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .close:
            context.close(promise: nil)
        case .sendAndClose(let packet, let version):
            do {
                let bytes = try packet.encoded(version: version, allocator: context.channel.allocator)
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(bytes)).whenComplete { _ in channel.close(promise: nil) }
            } catch {
                logger.error("could not encode a reply", metadata: ["error": "\(error)"])
                context.close(promise: nil)
            }
        }
    }
}
