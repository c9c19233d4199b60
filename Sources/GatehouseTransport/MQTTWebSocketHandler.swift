import GatehouseBroker
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Carries the MQTT byte stream in binary WebSocket frames. Packets may span frames and
/// frames may hold several packets: the MQTT frame decoder behind this handler reassembles.
/// A text frame closes the connection [MQTT-6.0.0-1]; ping is answered; a DISCONNECT or any
/// other close sends a close frame first.
final class MQTTWebSocketHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private var logger: Logger
    private var closeFrameSent = false

    init(logger: Logger) { self.logger = logger }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .continuation:
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            // Echo the close and end the TCP connection; the connection handler learns of it
            // as channelInactive, like a dropped socket (the Will is published).
            sendClose(context: context, code: .normalClosure)
            context.close(promise: nil)
        case .text:
            logger.info("WebSocket connection refused", metadata: ["reason": "text frame; MQTT uses binary frames"])
            sendClose(context: context, code: .unacceptableData)
            context.close(promise: nil)
        default:
            logger.info("WebSocket connection refused", metadata: ["reason": "unknown opcode \(frame.opcode)"])
            sendClose(context: context, code: .protocolError)
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = WebSocketFrame(fin: true, opcode: .binary, data: unwrapOutboundIn(data))
        context.write(wrapOutboundOut(frame), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // Half-closing after a DISCONNECT starts the closing handshake too (RFC 6455 §7.1.2).
        if mode != .input { sendClose(context: context, code: .normalClosure) }
        context.close(mode: mode, promise: promise)
    }

    private func sendClose(context: ChannelHandlerContext, code: WebSocketErrorCode) {
        guard !closeFrameSent, context.channel.isActive else { return }
        closeFrameSent = true
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.write(webSocketErrorCode: code)
        context.writeAndFlush(
            wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
    }
}

/// Answers HTTP requests that do not become a WebSocket: 404 for another path, 400 for the
/// right path without an acceptable upgrade (no `mqtt` subprotocol, not a WebSocket request).
/// Also bounds the time to upgrade, as the connect timeout bounds the time to CONNECT.
final class WebSocketRefusalHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "gatehouse.websocket-refusal"

    private let path: String
    private let deadline: NIODeadline
    private var logger: ConnectionLogger
    private var timeout: Scheduled<Void>?

    init(path: String, deadline: NIODeadline, logger: Logger) {
        self.path = path
        self.deadline = deadline
        self.logger = ConnectionLogger(logger)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        logger.remote = context.remoteAddress
        timeout = context.closeConnection(
            at: deadline, logging: "WebSocket connection refused", reason: "no upgrade within the connect timeout",
            with: logger)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let requestedPath = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let reason: String
        if requestedPath != path {
            (status, reason) = (.notFound, "path '\(requestedPath)' is not '\(path)'")
        } else if !head.headers[canonicalForm: "upgrade"].contains(where: { $0.lowercased() == "websocket" }) {
            (status, reason) = (.badRequest, "not a WebSocket upgrade request")
        } else {
            let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map(String.init)
            (status, reason) = (.badRequest, "no acceptable subprotocol (offered: \(offered.joined(separator: ", ")))")
        }
        logger.info("WebSocket connection refused", metadata: ["reason": "\(reason)", "status": "\(status.code)"])
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: "0")
        headers.add(name: "Connection", value: "close")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
            promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// The subprotocols MQTT over WebSocket uses; `mqttv3.1` is what old 3.1 clients send.
enum MQTTWebSocketSubprotocol {
    static let accepted = ["mqtt", "mqttv3.1"]

    /// The response headers for an acceptable upgrade to `path`, or nil to decline it.
    static func upgradeHeaders(for head: HTTPRequestHead, path: String) -> HTTPHeaders? {
        let requestedPath = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        guard requestedPath == path else { return nil }
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.lowercased() }
        guard let chosen = accepted.first(where: { offered.contains($0) }) else { return nil }
        var headers = HTTPHeaders()
        headers.add(name: "Sec-WebSocket-Protocol", value: chosen)
        return headers
    }
}
