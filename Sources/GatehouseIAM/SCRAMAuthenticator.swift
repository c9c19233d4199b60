import Crypto
import Foundation
public import GatehouseAuth
public import Logging

/// `SCRAM-SHA-256` in MQTT 5's AUTH exchange: CONNECT carries the client's first message,
/// AUTH 0x18 the server's and the client's final one, CONNACK the server's signature. The
/// password never crosses the wire; the store keeps only the verifier.
///
/// An unknown user, a password set before verifiers were stored, and a wrong proof all get
/// the same exchange (a stable salt per name) and the same refusal.
public struct SCRAMAuthenticator: EnhancedAuthenticator {
    public static let method = "SCRAM-SHA-256"
    let store: IdentityStore
    let logger: Logger
    /// Keys the decoy salts of names without a verifier, so that they look as stable as real ones.
    private let decoyKey = SymmetricKey(size: .bits256)

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public var methods: Set<String> { [Self.method] }

    public func start(method: String, data: [UInt8], credentials: ConnectCredentials) async
        -> EnhancedAuthenticationStep
    {
        guard let text = String(validating: data, as: UTF8.self), let first = SCRAMServerExchange.ClientFirst(text)
        else { return refuse("malformed client-first message", nil) }
        let found: (match: CredentialMatch, verifier: SCRAMVerifier)?
        do {
            found = try await store.scramMatch(username: first.username)
        } catch {
            logger.error("SCRAM lookup failed", metadata: ["error": "\(error)"])
            return .rejected
        }
        let exchange = SCRAMServerExchange(
            clientFirst: first, verifier: found?.verifier ?? decoy(for: first.username), serverNonce: SCRAM.nonce())
        return .challenge(
            data: Array(exchange.serverFirst.utf8),
            next: Continuation(
                exchange: exchange, match: found?.match, clientIdentifier: credentials.clientIdentifier,
                authenticator: self))
    }

    private func decoy(for username: String) -> SCRAMVerifier {
        let salt = HMAC<SHA256>.authenticationCode(for: Array(username.utf8), using: decoyKey)
        return SCRAMVerifier(
            salt: Array(Array(salt).prefix(16)), iterations: SCRAMVerifier.defaultIterations,
            storedKey: Array(repeating: 0, count: 32), serverKey: Array(repeating: 0, count: 32))
    }

    fileprivate func refuse(_ reason: String, _ username: String?) -> EnhancedAuthenticationStep {
        logger.info("SCRAM refused", metadata: ["reason": "\(reason)", "username": "\(username ?? "")"])
        return .rejected
    }

    private struct Continuation: EnhancedAuthenticationContinuation {
        let exchange: SCRAMServerExchange
        let match: CredentialMatch?
        let clientIdentifier: String
        let authenticator: SCRAMAuthenticator

        func respond(_ data: [UInt8]) async -> EnhancedAuthenticationStep {
            let username = exchange.clientFirst.username
            guard let text = String(validating: data, as: UTF8.self), let serverFinal = exchange.finish(text),
                let match
            else { return authenticator.refuse("unknown user or wrong proof", username) }
            guard let principal = match.principal(clientIdentifier: clientIdentifier) else {
                return authenticator.refuse("identity disabled or client id not allowed", username)
            }
            return .accepted(principal, data: Array(serverFinal.utf8))
        }
    }
}
