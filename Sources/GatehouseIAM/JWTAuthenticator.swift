import Crypto
import Foundation
public import GatehouseAuth
import GatehouseCertificates
import JWTKit
public import Logging
import NIOConcurrencyHelpers

/// `jwt`: a JWT as the MQTT password, from Gatehouse itself or from a trusted issuer. The
/// signature, `exp` (required), `nbf`, `iss` and `aud` are checked; `alg: none` and a token
/// whose `alg` is not its key's own algorithm are refused.
///
/// The check runs on the event loop, without suspending: jwt-kit resolves each (kid, alg) to a
/// key once, asynchronously, and the resolved key then verifies signatures directly. A token
/// verified once is remembered by its SHA-256, so a device reconnecting with the same JWT costs
/// a hash and the claim checks; the memory is emptied whenever the identity store changes.
public final class JWTAuthenticator: Authenticator {
    private let store: IdentityStore
    private let logger: Logger
    private let keys = NIOLockedValueBox(SequenceScoped<String, IssuerKeys>())
    private let verified = NIOLockedValueBox(SequenceScoped<SHA256Digest, VerifiedClaims>())
    /// Enough for a fleet's reconnect storm; past it the memory starts again empty.
    static let verifiedCapacity = 16_384

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        guard let password = credentials.password, Self.looksLikeJWT(password) else { return .skipped }
        // Refusals and keys not yet resolved take the asynchronous way.
        guard let snapshot = store.cachedSnapshot.withLockedValue({ $0 }),
            case .decided(.success(let principal)) = decide(password, snapshot: snapshot, credentials)
        else { return nil }
        return .accepted(principal)
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        guard let password = credentials.password, Self.looksLikeJWT(password) else { return .skipped }
        let verdict = await store.decideWithFreshState { snapshot in
            switch self.decide(password, snapshot: snapshot, credentials) {
            case .decided(let result):
                return result
            case .needsKey(let request):
                do { try await self.resolve(request, sequence: snapshot.sequence) } catch {
                    return .failure(IAMError("no usable key (\(error))"))
                }
                guard case .decided(let result) = self.decide(password, snapshot: snapshot, credentials) else {
                    return .failure(IAMError("no usable key"))
                }
                return result
            }
        }
        return verdict.outcome(refusal: "JWT refused", logger: logger, credentials)
    }

    // MARK: Deciding

    enum Step<Value> {
        case decided(Result<Value, IAMError>)
        /// The issuer's key for this token is not resolved yet (an asynchronous step).
        case needsKey(KeyRequest)
    }

    struct KeyRequest {
        var issuerName: String
        var trusted: TrustedIssuer?
        var keyID: String?
        var algorithm: String
    }

    private func decide(_ token: [UInt8], snapshot: IdentitySnapshot, _ credentials: ConnectCredentials) -> Step<
        Principal
    > {
        let digest = SHA256.hash(data: token)
        let claims: VerifiedClaims
        if let remembered = verified.withLockedValue({ $0.value(for: digest, sequence: snapshot.sequence) }) {
            claims = remembered
        } else {
            switch verify(token, snapshot: snapshot) {
            case .needsKey(let request): return .needsKey(request)
            case .decided(.failure(let reason)): return .decided(.failure(reason))
            case .decided(.success(let fresh)):
                claims = fresh
                verified.withLockedValue {
                    $0.insert(fresh, for: digest, sequence: snapshot.sequence, capacity: Self.verifiedCapacity)
                }
            }
        }
        return .decided(principal(from: claims, snapshot: snapshot, credentials))
    }

    /// The signature and the claims that do not change with time, for the issuer the token names.
    private func verify(_ token: [UInt8], snapshot: IdentitySnapshot) -> Step<VerifiedClaims> {
        guard let parsed = CompactJWT(token), let issuerName = parsed.claims.string("iss") else {
            return .decided(.failure(IAMError("unreadable")))
        }
        let trusted = snapshot.issuers[issuerName]
        guard store.isLocalIssuer(issuerName) || trusted != nil else {
            return .decided(.failure(IAMError("untrusted issuer '\(issuerName)'")))
        }
        guard
            let key = keys.withLockedValue({ $0.value(for: issuerName, sequence: snapshot.sequence) })?
                .resolvedKey(keyID: parsed.keyID, algorithm: parsed.algorithm)
        else {
            return .needsKey(
                KeyRequest(issuerName: issuerName, trusted: trusted, keyID: parsed.keyID, algorithm: parsed.algorithm))
        }
        guard (try? key.verify(parsed.signature, signs: parsed.signingInput)) == true else {
            return .decided(.failure(IAMError("signature not verified")))
        }
        guard parsed.claims.strings("aud").contains(trusted?.audience ?? JWTIssuer.audience) else {
            return .decided(.failure(IAMError("wrong audience")))
        }
        guard let expiry = parsed.claims.number("exp") else { return .decided(.failure(IAMError("no 'exp' claim"))) }
        guard let claims = VerifiedClaims(parsed.claims, issuer: trusted, expiry: Int64(expiry)) else {
            return .decided(.failure(IAMError("no subject or tenant claim")))
        }
        return .decided(.success(claims))
    }

    /// Builds the issuer's key collection (once per snapshot) and resolves the token's key in it.
    private func resolve(_ request: KeyRequest, sequence: Int64) async throws {
        let cached = keys.withLockedValue { $0.value(for: request.issuerName, sequence: sequence) }
        let issuerKeys: IssuerKeys
        if let cached {
            issuerKeys = cached
        } else {
            let collection =
                if let trusted = request.trusted { try await trusted.keyCollection() } else {
                    try await JWTIssuer.verificationKeys(in: store)
                }
            issuerKeys = IssuerKeys(collection: collection)
            keys.withLockedValue { $0.insert(issuerKeys, for: request.issuerName, sequence: sequence, capacity: 1_024) }
        }
        try await issuerKeys.resolveKey(keyID: request.keyID, algorithm: request.algorithm)
    }

    /// The identity behind verified claims, checked against the snapshot and the clock.
    private func principal(
        from claims: VerifiedClaims, snapshot: IdentitySnapshot, _ credentials: ConnectCredentials
    ) -> Result<Principal, IAMError> {
        let moment = now()
        guard claims.expiry > moment else { return .failure(IAMError("expired")) }
        if let notBefore = claims.notBefore, notBefore > moment + 5 { return .failure(IAMError("not yet valid")) }
        if let username = credentials.username, !username.isEmpty, username != claims.subject {
            return .failure(IAMError("user name is not the token's subject"))
        }
        guard let external = claims.external else {
            // Issued here: the identity must exist and be enabled, and keep the token's roles.
            guard var match = snapshot.identities[claims.subject] else { return .failure(IAMError("unknown identity")) }
            if let tokenID = claims.tokenID, snapshot.revokedTokenIDs.contains(tokenID) {
                return .failure(IAMError("revoked"))
            }
            match.credentialID = claims.credentialID
            guard var principal = match.principal(clientIdentifier: credentials.clientIdentifier) else {
                return .failure(IAMError("identity disabled or client id not allowed"))
            }
            guard Set(claims.roles).isSubset(of: principal.roles) else {
                return .failure(IAMError("token claims roles the identity no longer has"))
            }
            principal.roles = claims.roles
            principal.expiresAt = claims.expiry
            return .success(principal)
        }
        // The issuer is still trusted: remembered claims hold only for the snapshot they were
        // verified on, and removing an issuer moves the snapshot on.
        return .success(
            Principal(
                identityID: external.identityID, username: claims.subject,
                clientIdentifier: credentials.clientIdentifier, tenant: external.tenant, roles: claims.roles,
                credentialID: claims.credentialID, expiresAt: claims.expiry))
    }

    /// Three base64url parts, the header a JSON object (`eyJ` is `{"`).
    static func looksLikeJWT(_ password: [UInt8]) -> Bool {
        password.starts(with: "eyJ".utf8) && password.count(where: { $0 == UInt8(ascii: ".") }) == 2
    }
}

/// A compact JWS split into its parts, its header and claims read once.
struct CompactJWT {
    let algorithm: String
    let keyID: String?
    let claims: JWTClaims
    /// `header.payload`, the bytes the signature covers.
    let signingInput: ArraySlice<UInt8>
    let signature: [UInt8]

    init?(_ token: [UInt8]) {
        guard let firstDot = token.firstIndex(of: UInt8(ascii: ".")),
            let secondDot = token[(firstDot + 1)...].firstIndex(of: UInt8(ascii: ".")),
            let headerJSON = JWTClaims.base64URLDecoded(token[..<firstDot]),
            let header = try? JSONSerialization.jsonObject(with: Data(headerJSON)) as? [String: Any],
            let algorithm = header["alg"] as? String,
            let claims = JWTClaims(encodedPayload: token[(firstDot + 1)..<secondDot]),
            let signature = JWTClaims.base64URLDecoded(token[(secondDot + 1)...])
        else { return nil }
        self.algorithm = algorithm
        self.keyID = header["kid"] as? String
        self.claims = claims
        self.signingInput = token[..<secondDot]
        self.signature = signature
    }
}

/// What a verified token says, reduced to what deciding a CONNECT needs.
struct VerifiedClaims: Sendable {
    struct External: Sendable {
        var identityID: String
        var tenant: String
    }

    var subject: String
    var roles: [String]
    var expiry: Int64
    var notBefore: Int64?
    var credentialID: String
    /// `jti` of a token Gatehouse issued, by which it can be revoked.
    var tokenID: String?
    /// Set for a trusted issuer's token; nil for one Gatehouse issued.
    var external: External?

    init?(_ claims: JWTClaims, issuer: TrustedIssuer?, expiry: Int64) {
        self.expiry = expiry
        self.notBefore = claims.number("nbf").map { Int64($0) }
        guard let issuer else {
            guard let subject = claims.string("sub") else { return nil }
            self.subject = subject
            self.roles = claims.strings("roles")
            self.tokenID = claims.string("jti")
            self.credentialID = "jwt:\(JWTIssuer.issuerName)" + (tokenID.map { "#\($0)" } ?? "")
            return
        }
        guard let subject = claims.string(issuer.subjectClaim), !subject.isEmpty,
            let tenant = claims.string(issuer.tenantClaim) ?? issuer.defaultTenant
        else { return nil }
        self.subject = subject
        self.roles = claims.strings(issuer.rolesClaim).sorted()
        self.credentialID = "jwt:\(issuer.issuer)"
        // External subjects get an identity id of their own, so that they can never own a
        // session of a local identity with the same name.
        let issuerDigest = hexString(SHA256.hash(data: Array(issuer.issuer.utf8)).prefix(6))
        self.external = External(identityID: "ext-\(issuerDigest)-\(subject)", tenant: tenant)
    }
}

/// One issuer's keys. jwt-kit finds the key for a (kid, alg) pair asynchronously (its key
/// collection is an actor); once found, the key verifies signatures with a plain call.
final class IssuerKeys: Sendable {
    private let collection: JWTKeyCollection
    private let resolved = NIOLockedValueBox<[String: any JWTAlgorithm]>([:])
    /// A client picks `kid` freely: pairs past this many are resolved each time, not kept.
    private static let resolvedLimit = 16

    init(collection: JWTKeyCollection) { self.collection = collection }

    private static func slot(_ keyID: String?, _ algorithm: String) -> String { "\(algorithm) \(keyID ?? "")" }

    func resolvedKey(keyID: String?, algorithm: String) -> (any JWTAlgorithm)? {
        resolved.withLockedValue { $0[Self.slot(keyID, algorithm)] }
    }

    func resolveKey(keyID: String?, algorithm: String) async throws {
        guard algorithm != "none" else { throw IAMError("alg none") }
        let key = try await collection.getKey(for: keyID.map { JWKIdentifier(string: $0) }, alg: algorithm)
        // The token's `alg` must be its key's own: no HS256 keyed with an RSA or EC public key.
        guard key.name == algorithm else { throw IAMError("alg \(algorithm) is not the key's (\(key.name))") }
        resolved.withLockedValue { resolved in
            if resolved.count < Self.resolvedLimit { resolved[Self.slot(keyID, algorithm)] = key }
        }
    }
}

/// A bounded map whose entries hold only for one identity-store sequence.
struct SequenceScoped<Key: Hashable, Value> {
    private var sequence: Int64 = -1
    private var entries: [Key: Value] = [:]

    func value(for key: Key, sequence: Int64) -> Value? {
        sequence == self.sequence ? entries[key] : nil
    }

    mutating func insert(_ value: Value, for key: Key, sequence: Int64, capacity: Int) {
        guard sequence >= self.sequence else { return }  // decided on a snapshot already replaced
        if sequence != self.sequence || entries.count >= capacity {
            entries.removeAll(keepingCapacity: sequence == self.sequence)
            self.sequence = sequence
        }
        entries[key] = value
    }
}

extension SequenceScoped: Sendable where Key: Sendable, Value: Sendable {}
