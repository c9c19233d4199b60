public import GatehouseAuth
public import Logging
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
        let match: CredentialMatch?
        do {
            // A lookup by SHA-256: the index compares digests, never the token itself.
            match = try await store.tokenMatch(digest: APIToken.digest(password))
        } catch {
            logger.error("token lookup failed", metadata: ["error": "\(error)"])
            return .rejected
        }
        guard let match else { return refuse("unknown or revoked token", credentials) }
        if let username = credentials.username, !username.isEmpty, username != match.identity.name {
            return refuse("user name is not the token's identity", credentials)
        }
        guard let principal = match.principal(clientIdentifier: credentials.clientIdentifier) else {
            return refuse("identity disabled, token expired or client id not allowed", credentials)
        }
        return .accepted(principal)
    }

    private func refuse(_ reason: String, _ credentials: ConnectCredentials) -> AuthenticationOutcome {
        logger.info("token refused", metadata: ["reason": "\(reason)", "client_id": "\(credentials.clientIdentifier)"])
        return .rejected
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
