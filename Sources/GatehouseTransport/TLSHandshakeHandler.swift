import Foundation
import GatehouseAuth
import GatehouseBroker
import GatehouseCertificates
import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// Holds a TLS connection until its handshake completes, then hands the verified client
/// certificate to `onVerified` (which builds the rest of the pipeline) and steps aside.
/// Refusals (plaintext, old TLS, unknown CA, expired, revoked, missing certificate) are
/// logged with their reason; the client sees only the TLS alert or the closed connection.
final class TLSHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let verifier: ClientCertificateVerifier?
    private let deadline: NIODeadline
    private let onVerified: (any Channel, ClientCertificate?) throws -> Void
    private var logger: ConnectionLogger
    private var timeout: Scheduled<Void>?
    private var verifiedCertificate: ClientCertificate?
    /// Set when the verifier refuses a chain: BoringSSL's own error says only that it failed.
    private var refusalReason: String?

    init(
        verifier: ClientCertificateVerifier?,
        deadline: NIODeadline,
        logger: Logger,
        onVerified: @escaping (any Channel, ClientCertificate?) throws -> Void
    ) {
        self.verifier = verifier
        self.deadline = deadline
        self.logger = ConnectionLogger(logger)
        self.onVerified = onVerified
    }

    /// For `NIOSSLServerHandler`: verifies the chain the client sent (leaf first) off the event
    /// loop, then completes the handshake's verification step on it. BoringSSL calls this only
    /// when a certificate arrived; `required` listeners refuse a missing one themselves.
    func verifyClientChain(_ chain: [NIOSSLCertificate], _ promise: EventLoopPromise<NIOSSLVerificationResult>) {
        guard let verifier else {
            promise.succeed(.failed)
            return
        }
        let chainDER = chain.compactMap { try? $0.toDERBytes() }
        promise.futureResult.eventLoop.makeFutureWithTask {
            await verifier.verify(chainDER: chainDER)
        }.assumeIsolated().whenSuccess { [self] outcome in
            switch outcome {
            case .verified(let certificate):
                verifiedCertificate = certificate
                promise.succeed(.certificateVerified)
            case .refused(let reason):
                refusalReason = reason
                promise.succeed(.failed)
            }
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        logger.remote = context.remoteAddress
        timeout = context.closeConnection(
            at: deadline, logging: "TLS connection refused", reason: "no TLS handshake within the connect timeout",
            with: logger)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case TLSUserEvent.handshakeCompleted = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        timeout?.cancel()
        do {
            try onVerified(context.channel, verifiedCertificate)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            logger.error("TLS connection dropped after the handshake", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.info("TLS connection refused", metadata: ["reason": "\(refusalReason ?? Self.describe(error))"])
        context.close(promise: nil)
    }

    /// BoringSSL's reason, e.g. WRONG_VERSION_NUMBER for plaintext or UNSUPPORTED_PROTOCOL for TLS 1.0.
    private static func describe(_ error: any Error) -> String {
        guard case NIOSSLError.handshakeFailed(let failure) = error else { return "\(error)" }
        // BoringSSL's text ends "...:OPENSSL_internal:REASON at FILE:LINE"; the REASON is what helps.
        let text = "\(failure)"
        guard let marker = text.range(of: "OPENSSL_internal:") else { return "handshake failed: \(text)" }
        let reason = text[marker.upperBound...].prefix { $0.isUppercase || $0.isNumber || $0 == "_" }
        return "handshake failed: \(reason)"
    }
}
