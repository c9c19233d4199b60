import Crypto
import Foundation
import GRDB
public import GatehouseAuth
import JWTKit
public import Logging

/// The claims of any JWT, kept as JSON values so that each issuer's claim names can be read.
struct FlexibleClaims: JWTPayload {
    enum Value: Codable, Sendable, Equatable {
        case string(String)
        case number(Double)
        case bool(Bool)
        case array([Value])
        case object([String: Value])
        case null

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self = .null
            } else if let value = try? container.decode(Bool.self) {
                self = .bool(value)
            } else if let value = try? container.decode(Double.self) {
                self = .number(value)
            } else if let value = try? container.decode(String.self) {
                self = .string(value)
            } else if let value = try? container.decode([Value].self) {
                self = .array(value)
            } else {
                self = .object(try container.decode([String: Value].self))
            }
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .string(let value): try container.encode(value)
            case .number(let value): try container.encode(value)
            case .bool(let value): try container.encode(value)
            case .array(let value): try container.encode(value)
            case .object(let value): try container.encode(value)
            case .null: try container.encodeNil()
            }
        }
    }

    var claims: [String: Value]

    init(from decoder: any Decoder) throws {
        claims = try decoder.singleValueContainer().decode([String: Value].self)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(claims)
    }

    /// Time and audience checks happen after verification, against the issuer's settings.
    func verify(using algorithm: some JWTAlgorithm) async throws {}

    func string(_ name: String) -> String? {
        if case .string(let value) = claims[name] { return value }
        return nil
    }

    func number(_ name: String) -> Double? {
        if case .number(let value) = claims[name] { return value }
        return nil
    }

    /// An array of strings, or one string of space- or comma-separated values (OAuth2 `scope`).
    func strings(_ name: String) -> [String] {
        switch claims[name] {
        case .array(let values): values.compactMap { if case .string(let text) = $0 { text } else { nil } }
        case .string(let text): text.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init)
        default: []
        }
    }
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
                sql: "SELECT kid, private_key_pem FROM signing_key WHERE retired_at IS NULL ORDER BY created_at DESC")
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
                db, sql: "SELECT kid, private_key_pem FROM signing_key ORDER BY created_at DESC LIMIT 2"
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
public actor JWTAuthenticator: Authenticator {
    private let store: IdentityStore
    private let logger: Logger
    /// Keys per issuer, rebuilt when the store changes.
    private var cache: [String: (keys: JWTKeyCollection, issuer: TrustedIssuer?)] = [:]
    private var cachedAt: Int64 = -1

    public init(store: IdentityStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        guard let password = credentials.password, Self.looksLikeJWT(password) else { return .skipped }
        let token = String(decoding: password, as: UTF8.self)
        guard let unverified = Self.unverifiedClaims(token), let issuer = unverified.string("iss")
        else { return refuse("unreadable JWT", credentials) }
        let entry: (keys: JWTKeyCollection, issuer: TrustedIssuer?)
        do {
            guard let found = try await keys(for: issuer) else {
                return refuse("untrusted issuer '\(issuer)'", credentials)
            }
            entry = found
        } catch {
            logger.error("JWT keys unavailable", metadata: ["issuer": "\(issuer)", "error": "\(error)"])
            return .rejected
        }
        let claims: FlexibleClaims
        do {
            claims = try await entry.keys.verify(token, as: FlexibleClaims.self)
        } catch {
            return refuse("signature not verified (\(error))", credentials)
        }
        let audience = entry.issuer?.audience ?? JWTIssuer.audience
        let moment = Double(now())
        guard claims.string("iss") == issuer, claims.strings("aud").contains(audience) else {
            return refuse("wrong issuer or audience", credentials)
        }
        guard let expiry = claims.number("exp") else { return refuse("no 'exp' claim", credentials) }
        guard expiry > moment else { return refuse("expired", credentials) }
        if let notBefore = claims.number("nbf"), notBefore > moment + 5 { return refuse("not yet valid", credentials) }
        if let principal = await principal(from: claims, issuer: entry.issuer, expiry: Int64(expiry), credentials) {
            return .accepted(principal)
        }
        return .rejected
    }

    private func principal(
        from claims: FlexibleClaims, issuer: TrustedIssuer?, expiry: Int64, _ credentials: ConnectCredentials
    ) async -> Principal? {
        guard let issuer else {
            // Issued here: the identity must exist and be enabled, and keep the token's roles.
            guard let subject = claims.string("sub"),
                let match = try? await store.identityMatch(named: subject, credentialID: "jwt:\(JWTIssuer.issuerName)"),
                var principal = match.principal(clientIdentifier: credentials.clientIdentifier)
            else {
                _ = refuse("identity unknown, disabled or not allowed this client id", credentials)
                return nil
            }
            if let username = credentials.username, !username.isEmpty, username != subject {
                _ = refuse("user name is not the token's subject", credentials)
                return nil
            }
            let roles = claims.strings("roles")
            guard Set(roles).isSubset(of: principal.roles) else {
                _ = refuse("token claims roles the identity no longer has", credentials)
                return nil
            }
            principal.roles = roles
            principal.expiresAt = expiry
            return principal
        }
        guard let subject = claims.string(issuer.subjectClaim), !subject.isEmpty,
            let tenant = claims.string(issuer.tenantClaim) ?? issuer.defaultTenant
        else {
            _ = refuse("no subject or tenant claim", credentials)
            return nil
        }
        if let username = credentials.username, !username.isEmpty, username != subject {
            _ = refuse("user name is not the token's subject", credentials)
            return nil
        }
        // External subjects get an identity id of their own, so that they can never own a
        // session of a local identity with the same name.
        let issuerDigest = SHA256.hash(data: Array(issuer.issuer.utf8)).prefix(6).map { String(format: "%02x", $0) }
        return Principal(
            identityID: "ext-\(issuerDigest.joined())-\(subject)", username: subject,
            clientIdentifier: credentials.clientIdentifier, tenant: tenant,
            roles: claims.strings(issuer.rolesClaim).sorted(), credentialID: "jwt:\(issuer.issuer)", expiresAt: expiry)
    }

    private func keys(for issuer: String) async throws -> (keys: JWTKeyCollection, issuer: TrustedIssuer?)? {
        let latest = try store.latestChange()
        if latest != cachedAt {
            cache = [:]
            cachedAt = latest
        }
        if let cached = cache[issuer] { return cached }
        let entry: (keys: JWTKeyCollection, issuer: TrustedIssuer?)
        if issuer == JWTIssuer.issuerName {
            entry = (try await JWTIssuer.verificationKeys(in: store), nil)
        } else {
            guard let trusted = try store.issuers().first(where: { $0.issuer == issuer }) else { return nil }
            entry = (try await trusted.keyCollection(), trusted)
        }
        cache[issuer] = entry
        return entry
    }

    private func refuse(_ reason: String, _ credentials: ConnectCredentials) -> AuthenticationOutcome {
        logger.info("JWT refused", metadata: ["reason": "\(reason)", "client_id": "\(credentials.clientIdentifier)"])
        return .rejected
    }

    /// The payload read without checking anything: only to pick the issuer's keys.
    static func unverifiedClaims(_ token: String) -> FlexibleClaims? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var base64 = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let json = Data(base64Encoded: base64) else { return nil }
        return try? JSONDecoder().decode(FlexibleClaims.self, from: json)
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
