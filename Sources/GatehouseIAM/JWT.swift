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

    /// The claims of a token's payload part (base64url JSON), read without checking anything:
    /// the signature is checked over exactly these bytes.
    init?(encodedPayload: some Collection<UInt8>) {
        guard let json = Self.base64URLDecoded(encodedPayload),
            let object = try? JSONSerialization.jsonObject(with: Data(json)) as? [String: Any]
        else { return nil }
        self.object = object
    }

    /// base64url without padding (RFC 7515 §2), decoded by table: Foundation's string
    /// rewriting to reach `Data(base64Encoded:)` cost more than the signature check.
    static func base64URLDecoded(_ text: some Collection<UInt8>) -> [UInt8]? {
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
    /// The OAuth2 client the token was issued to (RFC 9068 §2.2), for tokens from the token endpoint.
    var clientID: String?
    /// The granted roles as an OAuth2 scope, space-separated.
    var scope: String?

    enum CodingKeys: String, CodingKey {
        case iss, aud, sub, tenant, roles, iat, nbf, exp, jti, scope
        case clientID = "client_id"
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A JWT Gatehouse issued, as `gatehouse iam jwt list` shows it.
public struct IssuedJWT: Sendable, Equatable {
    public var id: String
    public var issuedAt: Int64
    public var expiresAt: Int64
    public var revokedAt: Int64?
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
        let keys = try await Self.signingKeys(kid: kid, pem: pem)
        let issuedAt = now()
        let claims = IssuedClaims(
            iss: store.issuerIdentifier, aud: Self.audience, sub: identity.name, tenant: identity.tenant,
            roles: granted.sorted(),
            iat: issuedAt, nbf: issuedAt, exp: issuedAt + lifetime, jti: randomID("jwt"), clientID: nil, scope: nil)
        let token = try await keys.sign(claims, kid: JWKIdentifier(string: kid))
        try store.write { db in
            try db.execute(
                sql: "INSERT INTO issued_jwt (jti, identity_id, kid, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [claims.jti, identity.id, kid, issuedAt, claims.exp])
            try IdentityStore.audit(
                db, actor: actor, action: "jwt.issue", subject: name,
                detail: "kid=\(kid) jti=\(claims.jti) exp=\(claims.exp)")
        }
        return token
    }

    /// An access token for the token endpoint, signed with the current key. The caller records
    /// it (`IssuedAccessToken.record`), so that it can be revoked with its refresh-token family;
    /// issuing writes no audit row, as it changes nothing that CONNECT decides on.
    func signAccessToken(
        identity: Identity, roles: [String], lifetime: Int64, clientID: String, family: String?
    ) async throws -> IssuedAccessToken {
        let (kid, pem) = try await currentKeyCached()
        let keys = try await Self.signingKeys(kid: kid, pem: pem)
        let issuedAt = now()
        let claims = IssuedClaims(
            iss: store.issuerIdentifier, aud: Self.audience, sub: identity.name, tenant: identity.tenant,
            roles: roles.sorted(), iat: issuedAt, nbf: issuedAt, exp: issuedAt + lifetime, jti: randomID("jwt"),
            clientID: clientID, scope: roles.sorted().joined(separator: " "))
        let token = try await keys.sign(claims, kid: JWKIdentifier(string: kid))
        return IssuedAccessToken(
            token: token, tokenID: claims.jti, identityID: identity.id, kid: kid, issuedAt: issuedAt,
            expiresAt: claims.exp, family: family, clientID: clientID)
    }

    /// The current signing key, read from the store at most once a second: a rotation by the
    /// CLI signs new tokens within a second, and the previous key still verifies the others.
    private func currentKeyCached() async throws -> (kid: String, pem: String) {
        let moment = ContinuousClock.now
        if let cached = store.currentSigningKey.withLockedValue({ $0 }), moment - cached.read < .seconds(1) {
            return (cached.kid, cached.pem)
        }
        let key = try await store.offloaded { [store] in try Self.currentKey(in: store, actor: "gatehouse:oauth") }
        store.currentSigningKey.withLockedValue { $0 = (key.kid, key.pem, moment) }
        return key
    }

    /// Parsing a PEM key costs more than signing with it: one collection per signing key.
    private static let signers = NIOLockedValueBox<[String: JWTKeyCollection]>([:])

    static func signingKeys(kid: String, pem: String) async throws -> JWTKeyCollection {
        if let cached = signers.withLockedValue({ $0[kid] }) { return cached }
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: try ES256PrivateKey(pem: pem), kid: JWKIdentifier(string: kid))
        signers.withLockedValue { $0[kid] = keys }
        return keys
    }

    /// The public halves of the current key and the one before it, as a JWKS (RFC 7517): what
    /// the `jwt` authenticator accepts, so what `/.well-known/jwks.json` serves.
    public static func publishedKeys(in store: IdentityStore) throws -> String {
        let rows = try store.read { db in
            try Row.fetchAll(db, sql: "SELECT kid, private_key_pem FROM signing_key ORDER BY rowid DESC LIMIT 2")
        }
        var keys: [[String: Any]] = []
        for row in rows {
            let key = try P256.Signing.PrivateKey(pemRepresentation: row["private_key_pem"] as String).publicKey
            let raw = Array(key.rawRepresentation)  // x ‖ y, 32 bytes each
            keys.append([
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": row["kid"] as String,
                "x": base64URL(raw[0..<32]), "y": base64URL(raw[32..<64]),
            ])
        }
        return PublishedKeySet(keys: keys).json
    }

    /// The JWTs issued to `name`, newest first.
    public static func issued(to name: String, in store: IdentityStore) throws -> [IssuedJWT] {
        let identity = try store.identity(named: name)
        return try store.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT jti, issued_at, expires_at, revoked_at FROM issued_jwt
                    WHERE identity_id = ? ORDER BY issued_at DESC, rowid DESC
                    """,
                arguments: [identity.id]
            ).map {
                IssuedJWT(
                    id: $0["jti"], issuedAt: $0["issued_at"], expiresAt: $0["expires_at"], revokedAt: $0["revoked_at"])
            }
        }
    }

    /// Revokes one issued JWT: it is refused from now on and the sessions it opened end.
    /// Returns the id of the identity it was issued to.
    @discardableResult
    public static func revoke(_ tokenID: String, in store: IdentityStore, actor: String) throws -> String {
        try store.write { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT issued_jwt.identity_id, identity.name FROM issued_jwt
                        JOIN identity ON identity.id = issued_jwt.identity_id
                        WHERE jti = ? AND revoked_at IS NULL
                        """,
                    arguments: [tokenID])
            else { throw IAMError("no unrevoked JWT '\(tokenID)'") }
            try db.execute(sql: "UPDATE issued_jwt SET revoked_at = ? WHERE jti = ?", arguments: [now(), tokenID])
            try IdentityStore.audit(
                db, actor: actor, action: "jwt.revoke", subject: row["name"], identityID: row["identity_id"],
                detail: "jti=\(tokenID)")
            return row["identity_id"]
        }
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

/// base64url without padding (RFC 7515 §2).
func base64URL(_ bytes: some Collection<UInt8>) -> String {
    Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
        .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
}

/// A signed access token not yet recorded in `issued_jwt`.
struct IssuedAccessToken: Sendable {
    var token: String
    var tokenID: String
    var identityID: String
    var kid: String
    var issuedAt: Int64
    var expiresAt: Int64
    var family: String?
    var clientID: String

    func record(_ db: Database) throws {
        let insert = try db.cachedStatement(
            sql: """
                INSERT INTO issued_jwt (jti, identity_id, kid, issued_at, expires_at, family, client_id)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
        try insert.execute(arguments: [tokenID, identityID, kid, issuedAt, expiresAt, family, clientID])
    }
}
