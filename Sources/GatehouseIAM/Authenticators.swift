import Foundation
public import GatehouseAuth
public import Logging
import NIOConcurrencyHelpers
import NIOPosix

/// `token`: an opaque API token (`gth_…`) as the MQTT password. The user name may be empty or
/// the identity's name. Other passwords are not its business: it skips them.
public struct TokenAuthenticator: Authenticator {
    let store: IdentityStore
    let logger: Logger

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        guard let password = credentials.password, APIToken.looksLikeToken(password) else { return .skipped }
        // A lookup by SHA-256: the table compares digests, never the token itself.
        let digest = APIToken.digest(password)
        let verdict = await store.decideWithFreshState { snapshot in
            Self.decide(snapshot.tokens[Data(digest)], credentials)
        }
        return verdict.outcome(refusal: "token refused", logger: logger, credentials)
    }

    /// Accepts from the cached snapshot at once; a refusal takes the asynchronous way, which may
    /// find the store changed since.
    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        guard let password = credentials.password, APIToken.looksLikeToken(password) else { return .skipped }
        guard let snapshot = store.cachedSnapshot.withLockedValue({ $0 }),
            case .success(let principal) = Self.decide(snapshot.tokens[Data(APIToken.digest(password))], credentials)
        else { return nil }
        return .accepted(principal)
    }

    private static func decide(_ match: CredentialMatch?, _ credentials: ConnectCredentials) -> Result<
        Principal, IAMError
    > {
        guard let match else { return .failure(IAMError("unknown or revoked token")) }
        if let username = credentials.username, !username.isEmpty, username != match.identity.name {
            return .failure(IAMError("user name is not the token's identity"))
        }
        guard let principal = match.principal(clientIdentifier: credentials.clientIdentifier) else {
            return .failure(IAMError("identity disabled, token expired or client id not allowed"))
        }
        return .success(principal)
    }
}

extension Result<Principal, IAMError> {
    /// What the chain sees. A refusal's reason goes to the log only: the client never learns it.
    func outcome(refusal: String, logger: Logger, _ credentials: ConnectCredentials) -> AuthenticationOutcome {
        switch self {
        case .success(let principal): return .accepted(principal)
        case .failure(let reason):
            logger.info(
                "\(refusal)", metadata: ["reason": "\(reason)", "client_id": "\(credentials.clientIdentifier)"])
            return .rejected
        }
    }
}

/// `password`: user name and password, checked against the scrypt hash on a thread pool so
/// the event loops never wait for it. An unknown user costs the same hash as a wrong password.
public struct PasswordAuthenticator: Authenticator {
    let store: IdentityStore
    let logger: Logger
    private static let decoy = try? PasswordHasher().hash("decoy password")

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        credentials.username == nil || credentials.password == nil ? .skipped : nil
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        guard let username = credentials.username, let password = credentials.password else { return .skipped }
        let found: (match: CredentialMatch, hash: [UInt8], kdf: String)?
        do {
            found = try await store.passwordMatch(username: username)
        } catch {
            logger.error("password lookup failed", metadata: ["error": "\(error)"])
            return .rejected
        }
        let hash = found?.hash ?? Self.decoy?.hash ?? []
        let kdf = found?.kdf ?? Self.decoy?.kdf ?? ""
        let verified =
            (try? await NIOThreadPool.singleton.runIfActive {
                PasswordHasher.verify(password, hash: hash, kdf: kdf)
            }) ?? false
        guard let found, verified else { return refuse("unknown user or wrong password", credentials) }
        guard let principal = found.match.principal(clientIdentifier: credentials.clientIdentifier) else {
            return refuse("identity disabled or client id not allowed", credentials)
        }
        return .accepted(principal)
    }

    private func refuse(_ reason: String, _ credentials: ConnectCredentials) -> AuthenticationOutcome {
        logger.info(
            "password refused",
            metadata: ["reason": "\(reason)", "username": "\(credentials.username ?? "")"])
        return .rejected
    }
}

/// `certificate`: the client certificate the TLS listener verified, bound to an identity by
/// fingerprint or by name under a CA. Connections without a certificate, or with one that is
/// bound to nobody, go on to the next method.
public struct CertificateAuthenticator: Authenticator {
    let store: IdentityStore
    let logger: Logger

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Accepts a bound certificate from the cached snapshot at once; anything else (unbound,
    /// refused, no snapshot yet) takes the asynchronous way, which reads the store.
    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        guard let certificate = credentials.clientCertificate else { return .skipped }
        guard let snapshot = store.cachedSnapshot.withLockedValue({ $0 }),
            let match = CertificateBindingKey.candidates(for: certificate).lazy.compactMap({
                snapshot.certificates[$0]
            }).first,
            credentials.username.map({ $0.isEmpty || $0 == match.identity.name }) ?? true,
            let principal = match.principal(clientIdentifier: credentials.clientIdentifier)
        else { return nil }
        return .accepted(principal)
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        guard let certificate = credentials.clientCertificate else { return .skipped }
        let match: CredentialMatch?
        do {
            match = try await store.certificateMatch(certificate)
        } catch {
            logger.error("certificate lookup failed", metadata: ["error": "\(error)"])
            return .rejected
        }
        guard let match else {
            logger.debug("certificate bound to no identity", metadata: ["sha256": "\(certificate.fingerprintSHA256)"])
            return .skipped
        }
        if let username = credentials.username, !username.isEmpty, username != match.identity.name {
            logger.info("certificate refused", metadata: ["reason": "user name is not the certificate's identity"])
            return .rejected
        }
        guard let principal = match.principal(clientIdentifier: credentials.clientIdentifier) else {
            logger.info("certificate refused", metadata: ["reason": "identity disabled or client id not allowed"])
            return .rejected
        }
        return .accepted(principal)
    }
}
