import Crypto
import Foundation
import GRDB
public import GatehouseAuth
import GatehouseCertificates
import JWTKit
public import Logging
import NIOConcurrencyHelpers

/// The claims of a JWT as its JSON object, so that each issuer's claim names can be read.
/// Parsed once with `JSONSerialization`: decoding an open-ended claim set through `Codable`
/// cost more than the signature check.
struct JWTClaims {
    let object: [String: Any]

    /// The payload of `token`, read without checking anything (the signature is checked later
    /// over exactly these bytes).
    init?(token: String) {
        let parts = token.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3, let json = Self.base64URLDecoded(parts[1]),
            let object = try? JSONSerialization.jsonObject(with: Data(json)) as? [String: Any]
        else { return nil }
        self.object = object
    }

    /// base64url without padding (RFC 7515 §2), decoded by table: Foundation's string
    /// rewriting to reach `Data(base64Encoded:)` cost more than the signature check.
    static func base64URLDecoded(_ text: Substring.UTF8View) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(text.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for character in text {
            let value: UInt8
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = character - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = character - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0") + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return nil
            }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        return output
    }

    func string(_ name: String) -> String? { object[name] as? String }

    func number(_ name: String) -> Double? {
        guard let number = object[name] as? NSNumber, !(object[name] is Bool) else { return nil }
        return number.doubleValue
    }

    /// An array of strings, or one string of space- or comma-separated values (OAuth2 `scope`).
    func strings(_ name: String) -> [String] {
        if let values = object[name] as? [Any] { return values.compactMap { $0 as? String } }
        if let text = object[name] as? String {
            return text.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init)
        }
        return []
    }
}

/// For jwt-kit: only the signature is checked; the claims are read from `JWTClaims`.
struct SignatureOnly: JWTPayload {
    init(from decoder: any Decoder) throws {}
    func encode(to encoder: any Encoder) throws {}
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// The claims of a JWT that Gatehouse issues.
struct IssuedClaims: JWTPayload {
    var iss: String
    var aud: String
    var sub: String
    var tenant: String
    var roles: [String]
    var iat: Int64
    var nbf: Int64
    var exp: Int64
    var jti: String

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Gatehouse's own JWT issuer: ES256 keys in the store, each with a `kid`. Rotation makes a
/// new signing key and keeps the previous one for verification, so tokens already handed out
/// stay valid until they expire.
public struct JWTIssuer: Sendable {
    public static let issuerName = "gatehouse"
    public static let audience = "gatehouse"

    let store: IdentityStore

    public init(store: IdentityStore) { self.store = store }

    /// Signs a token for `name` with the current key (made on first use).
    public func issue(for name: String, lifetime: Int64, roles: [String]? = nil, actor: String) async throws -> String {
        let identity = try store.identity(named: name)
        guard identity.enabled else { throw IAMError("identity '\(name)' is disabled") }
        let granted = roles ?? identity.roles
        let missing = Set(granted).subtracting(identity.roles)
        guard missing.isEmpty else {
            throw IAMError("'\(name)' does not have the role(s) \(missing.sorted().joined(separator: ", "))")
        }
        let (kid, pem) = try Self.currentKey(in: store, actor: actor)
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: try ES256PrivateKey(pem: pem), kid: JWKIdentifier(string: kid))
        let issuedAt = now()
        let claims = IssuedClaims(
            iss: Self.issuerName, aud: Self.audience, sub: identity.name, tenant: identity.tenant,
            roles: granted.sorted(),
            iat: issuedAt, nbf: issuedAt, exp: issuedAt + lifetime, jti: randomID("jwt"))
        let token = try await keys.sign(claims, kid: JWKIdentifier(string: kid))
        try store.write { db in
            try IdentityStore.audit(
                db, actor: actor, action: "jwt.issue", subject: name,
                detail: "kid=\(kid) jti=\(claims.jti) exp=\(claims.exp)")
        }
        return token
    }

    /// The newest signing key, made if there is none.
    static func currentKey(in store: IdentityStore, actor: String) throws -> (kid: String, pem: String) {
        if let current = try store.read({ db in
            try Row.fetchOne(
                db,
                sql: "SELECT kid, private_key_pem FROM signing_key WHERE retired_at IS NULL ORDER BY rowid DESC")
        }) {
            return (current["kid"], current["private_key_pem"])
        }
        _ = try rotateKey(in: store, actor: actor)
        return try currentKey(in: store, actor: actor)
    }

    /// Makes a new signing key; the previous one is kept for verification. Returns the new kid.
    public static func rotateKey(in store: IdentityStore, actor: String) throws -> String {
        let kid = randomID("key")
        let pem = P256.Signing.PrivateKey().pemRepresentation
        try store.write { db in
            try db.execute(sql: "UPDATE signing_key SET retired_at = ? WHERE retired_at IS NULL", arguments: [now()])
            try db.execute(
                sql: "INSERT INTO signing_key (kid, private_key_pem, created_at) VALUES (?, ?, ?)",
                arguments: [kid, pem, now()])
            try IdentityStore.audit(db, actor: actor, action: "jwt.rotate-key", subject: kid)
        }
        return kid
    }

    /// The current key and the one before it, public halves only.
    static func verificationKeys(in store: IdentityStore) async throws -> JWTKeyCollection {
        let rows = try await store.readAsync { db in
            try Row.fetchAll(
                db, sql: "SELECT kid, private_key_pem FROM signing_key ORDER BY rowid DESC LIMIT 2"
            ).map { (kid: $0["kid"] as String, pem: $0["private_key_pem"] as String) }
        }
        let keys = JWTKeyCollection()
        for row in rows {
            await keys.add(ecdsa: try ES256PrivateKey(pem: row.pem).publicKey, kid: JWKIdentifier(string: row.kid))
        }
        return keys
    }
}

/// `jwt`: a JWT as the MQTT password, from Gatehouse itself or from a trusted issuer. The
/// signature, `exp` (required), `nbf`, `iss` and `aud` are checked; `alg: none` and keys of
/// another algorithm than the issuer registered are refused by construction (each issuer's
/// collection holds only its own keys).
public final class JWTAuthenticator: Authenticator {
    private let store: IdentityStore
    private let logger: Logger
    /// Keys per issuer, for the snapshot sequence they were built from.
    private let cache = NIOLockedValueBox<(sequence: Int64, keys: [String: JWTKeyCollection])>((-1, [:]))

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        guard let password = credentials.password, Self.looksLikeJWT(password) else { return .skipped }
        return nil
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        guard let password = credentials.password, Self.looksLikeJWT(password) else { return .skipped }
        let token = String(decoding: password, as: UTF8.self)
        guard let claims = JWTClaims(token: token), let issuerName = claims.string("iss") else {
            logger.info(
                "JWT refused", metadata: ["reason": "unreadable", "client_id": "\(credentials.clientIdentifier)"])
            return .rejected
        }
        let verdict = await store.decideWithFreshState { snapshot in
            await self.decide(token: token, claims: claims, issuerName: issuerName, snapshot: snapshot, credentials)
        }
        switch verdict {
        case .success(let principal): return .accepted(principal)
        case .failure(let reason):
            logger.info(
                "JWT refused", metadata: ["reason": "\(reason)", "client_id": "\(credentials.clientIdentifier)"])
            return .rejected
        }
    }

    private func decide(
        token: String, claims: JWTClaims, issuerName: String, snapshot: IdentitySnapshot,
        _ credentials: ConnectCredentials
    ) async -> Result<Principal, IAMError> {
        let trusted = snapshot.issuers[issuerName]
        guard issuerName == JWTIssuer.issuerName || trusted != nil else {
            return .failure(IAMError("untrusted issuer '\(issuerName)'"))
        }
        do {
            let keys = try await keyCollection(for: issuerName, trusted: trusted, sequence: snapshot.sequence)
            _ = try await keys.verify(token, as: SignatureOnly.self)
        } catch {
            return .failure(IAMError("signature not verified (\(error))"))
        }
        let moment = Double(now())
        guard claims.strings("aud").contains(trusted?.audience ?? JWTIssuer.audience) else {
            return .failure(IAMError("wrong audience"))
        }
        guard let expiry = claims.number("exp") else { return .failure(IAMError("no 'exp' claim")) }
        guard expiry > moment else { return .failure(IAMError("expired")) }
        if let notBefore = claims.number("nbf"), notBefore > moment + 5 { return .failure(IAMError("not yet valid")) }
        return principal(from: claims, issuer: trusted, snapshot: snapshot, expiry: Int64(expiry), credentials)
    }

    private func principal(
        from claims: JWTClaims, issuer: TrustedIssuer?, snapshot: IdentitySnapshot, expiry: Int64,
        _ credentials: ConnectCredentials
    ) -> Result<Principal, IAMError> {
        guard let issuer else {
            // Issued here: the identity must exist and be enabled, and keep the token's roles.
            guard let subject = claims.string("sub"), var match = snapshot.identities[subject] else {
                return .failure(IAMError("unknown identity"))
            }
            if let username = credentials.username, !username.isEmpty, username != subject {
                return .failure(IAMError("user name is not the token's subject"))
            }
            match.credentialID = "jwt:\(JWTIssuer.issuerName)"
            guard var principal = match.principal(clientIdentifier: credentials.clientIdentifier) else {
                return .failure(IAMError("identity disabled or client id not allowed"))
            }
            let roles = claims.strings("roles")
            guard Set(roles).isSubset(of: principal.roles) else {
                return .failure(IAMError("token claims roles the identity no longer has"))
            }
            principal.roles = roles
            principal.expiresAt = expiry
            return .success(principal)
        }
        guard let subject = claims.string(issuer.subjectClaim), !subject.isEmpty,
            let tenant = claims.string(issuer.tenantClaim) ?? issuer.defaultTenant
        else { return .failure(IAMError("no subject or tenant claim")) }
        if let username = credentials.username, !username.isEmpty, username != subject {
            return .failure(IAMError("user name is not the token's subject"))
        }
        // External subjects get an identity id of their own, so that they can never own a
        // session of a local identity with the same name.
        let issuerDigest = hexString(SHA256.hash(data: Array(issuer.issuer.utf8)).prefix(6))
        return .success(
            Principal(
                identityID: "ext-\(issuerDigest)-\(subject)", username: subject,
                clientIdentifier: credentials.clientIdentifier, tenant: tenant,
                roles: claims.strings(issuer.rolesClaim).sorted(), credentialID: "jwt:\(issuer.issuer)",
                expiresAt: expiry))
    }

    private func keyCollection(for issuer: String, trusted: TrustedIssuer?, sequence: Int64) async throws
        -> JWTKeyCollection
    {
        let cached = cache.withLockedValue { cache -> JWTKeyCollection? in
            if cache.sequence != sequence { cache = (sequence, [:]) }
            return cache.keys[issuer]
        }
        if let cached { return cached }
        let keys =
            if let trusted { try await trusted.keyCollection() } else {
                try await JWTIssuer.verificationKeys(in: store)
            }
        cache.withLockedValue { cache in
            if cache.sequence == sequence { cache.keys[issuer] = keys }
        }
        return keys
    }

    /// Three base64url parts, the header a JSON object (`eyJ` is `{"`).
    static func looksLikeJWT(_ password: [UInt8]) -> Bool {
        password.starts(with: Array("eyJ".utf8)) && password.count(where: { $0 == UInt8(ascii: ".") }) == 2
    }
}

extension TrustedIssuer {
    /// The issuer's keys: its JWKS (a single JWK is taken as a set of one) or its HS256 secret.
    func keyCollection() async throws -> JWTKeyCollection {
        let keys = JWTKeyCollection()
        if let jwks {
            let parsed = try? JSONSerialization.jsonObject(with: Data(jwks.utf8))
            guard let object = parsed as? [String: Any] else { throw IAMError("the JWKS is not a JSON object") }
            let document = object["keys"] != nil ? jwks : "{\"keys\": [\(jwks)]}"
            do { try await keys.add(jwksJSON: document) } catch {
                throw IAMError("the JWKS cannot be used: \(error)")
            }
        }
        if let hmacSecret {
            guard hmacSecret.utf8.count >= 32 else { throw IAMError("an HS256 secret needs at least 32 bytes") }
            await keys.add(hmac: HMACKey(from: hmacSecret), digestAlgorithm: .sha256)
        }
        return keys
    }

    /// Fails with the reason when the keys cannot be read, so that a bad issuer is refused when added.
    public func validateKeys() async throws {
        _ = try await keyCollection()
    }
}
