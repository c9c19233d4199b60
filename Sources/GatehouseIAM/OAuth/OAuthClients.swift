import Foundation
import GRDB

/// The grants an OAuth2 client may use at the token endpoint.
public enum OAuthGrant: String, Sendable, CaseIterable, Codable {
    case clientCredentials = "client_credentials"
    /// RFC 7523 §2.1: a JWT the client (or a trusted issuer) signed, exchanged for an access token.
    case jwtBearer = "jwt-bearer"
    /// Refresh tokens are handed out with the JWT-bearer grant and exchanged with this one.
    case refreshToken = "refresh_token"

    /// The `grant_type` value of RFC 6749 / RFC 7523.
    public var grantType: String {
        switch self {
        case .clientCredentials: "client_credentials"
        case .jwtBearer: "urn:ietf:params:oauth:grant-type:jwt-bearer"
        case .refreshToken: "refresh_token"
        }
    }
}

/// Where a client's or an issuer's public keys come from: a JWKS kept in the store, or one
/// fetched from a URL (cached, fetched again when an unknown `kid` arrives).
public struct PublicKeySource: Sendable, Equatable {
    public var jwks: String?
    public var jwksURI: String?

    public init(jwks: String? = nil, jwksURI: String? = nil) {
        self.jwks = jwks
        self.jwksURI = jwksURI
    }

    public var isEmpty: Bool { jwks == nil && jwksURI == nil }
}

/// An identity's OAuth2 settings. The client id is the identity's name.
public struct OAuthClient: Sendable, Equatable {
    public var identity: Identity
    public var grants: [OAuthGrant]
    /// The scopes it may ask for; nil allows every role the identity holds.
    public var scopes: [String]?
    public var hasSecret: Bool
    public var keys: PublicKeySource
    public var enabled: Bool
    public var createdAt: Int64

    public var clientID: String { identity.name }
}

/// A trusted issuer of JWT-bearer assertions: whose keys sign them, which subjects it may
/// assert and in which tenant those subjects are looked up.
public struct AssertionIssuer: Sendable, Equatable {
    public var issuer: String
    public var keys: PublicKeySource
    public var tenant: String?
    /// `*`, `prefix*` or a single name.
    public var subjects: String

    public init(issuer: String, keys: PublicKeySource, tenant: String? = nil, subjects: String) {
        self.issuer = issuer
        self.keys = keys
        self.tenant = tenant
        self.subjects = subjects
    }

    func mayAssert(_ subject: String) -> Bool {
        if subjects == "*" { return true }
        if subjects.hasSuffix("*") { return subject.hasPrefix(subjects.dropLast()) }
        return subject == subjects
    }
}

extension IdentityStore {
    static func checkKeys(_ keys: PublicKeySource) throws {
        if let jwks = keys.jwks {
            guard let set = PublishedKeySet(json: jwks), !set.keyIDs.isEmpty else {
                throw IAMError("the JWKS must be a JSON object with 'keys', each key with a 'kid'")
            }
        }
        if let uri = keys.jwksURI {
            guard let url = URL(string: uri), url.scheme == "https", url.host != nil else {
                throw IAMError("a jwks_uri must be an https:// URL, not '\(uri)'")
            }
        }
    }

    /// Makes `identity` an OAuth2 client. With `secret: true` a client secret is generated and
    /// returned (shown once; stored hashed like passwords).
    public func createClient(
        _ name: String, grants: [OAuthGrant], scopes: [String]? = nil, secret: Bool, keys: PublicKeySource,
        hasher: PasswordHasher = PasswordHasher(), actor: String
    ) throws -> String? {
        guard !grants.isEmpty else { throw IAMError("a client needs at least one grant") }
        try Self.checkKeys(keys)
        if grants.contains(.clientCredentials) && !secret && keys.isEmpty {
            throw IAMError("client_credentials needs a secret (--secret) or public keys (--jwks, --jwks-uri)")
        }
        if grants.contains(.jwtBearer) && keys.isEmpty {
            throw IAMError("the jwt-bearer grant needs the client's public keys (--jwks or --jwks-uri)")
        }
        for scope in scopes ?? [] { try Self.checkName(scope, "scope") }
        let generated = secret ? APIToken.generate(prefix: SecretPrefix.clientSecret) : nil
        let hashed = try generated.map { try hasher.hash($0) }
        try write(conflict: "'\(name)' is already an OAuth2 client") { db in
            let identity = try Self.identity(db, named: name)
            guard identity.kind != .user else {
                throw IAMError("an OAuth2 client is an application, service or device identity, not a user")
            }
            try db.execute(
                sql: """
                    INSERT INTO oauth_client (identity_id, grants, scopes, secret_hash, secret_kdf, jwks, jwks_uri,
                        created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    identity.id, grants.map(\.rawValue).joined(separator: ","),
                    scopes?.sorted().joined(separator: ","), hashed.map { Data($0.hash) }, hashed?.kdf, keys.jwks,
                    keys.jwksURI, now(),
                ])
            try Self.audit(
                db, actor: actor, action: "client.create", subject: name, identityID: identity.id,
                detail: "grants=\(grants.map(\.rawValue).joined(separator: ",")) secret=\(secret)"
                    + (keys.jwksURI.map { " jwks_uri=\($0)" } ?? ""))
        }
        return generated
    }

    public func client(named name: String) throws -> OAuthClient {
        try read { db in
            guard let client = try Self.client(db, named: name) else {
                throw IAMError("'\(name)' is not an OAuth2 client")
            }
            return client
        }
    }

    public func clients() throws -> [OAuthClient] {
        try read { db in
            try Row.fetchAll(
                db, sql: "SELECT identity.name FROM oauth_client JOIN identity ON identity.id = identity_id ORDER BY 1"
            ).compactMap { try Self.client(db, named: $0[0]) }
        }
    }

    static func client(_ db: Database, named name: String) throws -> OAuthClient? {
        guard
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT oauth_client.* FROM oauth_client JOIN identity ON identity.id = oauth_client.identity_id
                    WHERE identity.name = ?
                    """,
                arguments: [name])
        else { return nil }
        let scopes: String? = row["scopes"]
        let grants: String = row["grants"]
        return OAuthClient(
            identity: try identity(db, named: name),
            grants: grants.split(separator: ",").compactMap { OAuthGrant(rawValue: String($0)) },
            scopes: scopes.map { $0.split(separator: ",").map(String.init) },
            hasSecret: row["secret_hash"] as Data? != nil,
            keys: PublicKeySource(jwks: row["jwks"], jwksURI: row["jwks_uri"]),
            enabled: row["enabled"], createdAt: row["created_at"])
    }

    /// A new client secret; the old one stops working at once. Returned once.
    public func rotateClientSecret(
        _ name: String, hasher: PasswordHasher = PasswordHasher(), actor: String
    ) throws -> String {
        let secret = APIToken.generate(prefix: SecretPrefix.clientSecret)
        let hashed = try hasher.hash(secret)
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql: "UPDATE oauth_client SET secret_hash = ?, secret_kdf = ? WHERE identity_id = ?",
                arguments: [Data(hashed.hash), hashed.kdf, identity.id])
            guard db.changesCount == 1 else { throw IAMError("'\(name)' is not an OAuth2 client") }
            try Self.audit(db, actor: actor, action: "client.rotate-secret", subject: name, identityID: identity.id)
        }
        return secret
    }

    /// Adds a key to the client's stored JWKS, or removes the key with `kid`.
    public func changeClientKey(_ name: String, adding jwk: String? = nil, removing kid: String? = nil, actor: String)
        throws
    {
        try write { db in
            let identity = try Self.identity(db, named: name)
            guard
                let stored = try Row.fetchOne(
                    db, sql: "SELECT jwks FROM oauth_client WHERE identity_id = ?", arguments: [identity.id])
            else { throw IAMError("'\(name)' is not an OAuth2 client") }
            var set = (stored["jwks"] as String?).flatMap(PublishedKeySet.init(json:)) ?? PublishedKeySet(keys: [])
            if let jwk {
                guard let key = PublishedKeySet.key(json: jwk), let keyID = key["kid"] as? String else {
                    throw IAMError("the key must be one JWK (a JSON object) with a 'kid'")
                }
                guard !set.keyIDs.contains(keyID) else { throw IAMError("'\(name)' already has a key '\(keyID)'") }
                set.keys.append(key)
            }
            if let kid {
                guard set.keyIDs.contains(kid) else { throw IAMError("'\(name)' has no stored key '\(kid)'") }
                set.keys.removeAll { $0["kid"] as? String == kid }
            }
            try db.execute(
                sql: "UPDATE oauth_client SET jwks = ? WHERE identity_id = ?",
                arguments: [set.keys.isEmpty ? nil : set.json, identity.id])
            try Self.audit(
                db, actor: actor, action: jwk != nil ? "client.add-key" : "client.remove-key", subject: name,
                identityID: identity.id, detail: kid.map { "kid=\($0)" })
        }
    }

    public func setClientEnabled(_ name: String, _ enabled: Bool, actor: String) throws {
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql: "UPDATE oauth_client SET enabled = ? WHERE identity_id = ?", arguments: [enabled, identity.id])
            guard db.changesCount == 1 else { throw IAMError("'\(name)' is not an OAuth2 client") }
            if !enabled {
                try Self.revokeRefreshTokens(db, where: "identity_id = ?", identity.id, at: now())
            }
            try Self.audit(
                db, actor: actor, action: enabled ? "client.enable" : "client.disable", subject: name,
                identityID: identity.id)
        }
    }

    // MARK: Assertion issuers

    public func addAssertionIssuer(_ issuer: AssertionIssuer, actor: String) throws {
        guard !issuer.keys.isEmpty else { throw IAMError("an assertion issuer needs --jwks or --jwks-uri") }
        try Self.checkKeys(issuer.keys)
        guard !issuer.subjects.isEmpty else { throw IAMError("--subjects must name who it may assert, or '*'") }
        try write(conflict: "assertion issuer '\(issuer.issuer)' already exists") { db in
            if let tenant = issuer.tenant,
                try Bool.fetchOne(db, sql: "SELECT 1 FROM tenant WHERE name = ?", arguments: [tenant]) == nil
            {
                throw IAMError("no tenant named '\(tenant)'")
            }
            try db.execute(
                sql: """
                    INSERT INTO assertion_issuer (issuer, jwks, jwks_uri, tenant, subjects, created_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    issuer.issuer, issuer.keys.jwks, issuer.keys.jwksURI, issuer.tenant, issuer.subjects, now(),
                ])
            try Self.audit(
                db, actor: actor, action: "assertion-issuer.add", subject: issuer.issuer,
                detail: "subjects=\(issuer.subjects) tenant=\(issuer.tenant ?? "any")")
        }
    }

    public func removeAssertionIssuer(_ issuer: String, actor: String) throws {
        try write { db in
            try db.execute(sql: "DELETE FROM assertion_issuer WHERE issuer = ?", arguments: [issuer])
            guard db.changesCount == 1 else { throw IAMError("no assertion issuer '\(issuer)'") }
            try Self.audit(db, actor: actor, action: "assertion-issuer.remove", subject: issuer)
        }
    }

    public func assertionIssuers() throws -> [AssertionIssuer] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM assertion_issuer ORDER BY issuer").map(Self.assertionIssuer)
        }
    }

    static func assertionIssuer(_ row: Row) -> AssertionIssuer {
        AssertionIssuer(
            issuer: row["issuer"], keys: PublicKeySource(jwks: row["jwks"], jwksURI: row["jwks_uri"]),
            tenant: row["tenant"], subjects: row["subjects"])
    }

    /// Marks refresh tokens revoked, with the access tokens of their families.
    static func revokeRefreshTokens(_ db: Database, where condition: String, _ value: String, at moment: Int64) throws {
        try db.execute(
            sql: """
                UPDATE issued_jwt SET revoked_at = ? WHERE revoked_at IS NULL AND family IN
                    (SELECT family FROM refresh_token WHERE \(condition))
                """,
            arguments: [moment, value])
        try db.execute(
            sql: "UPDATE refresh_token SET revoked_at = ? WHERE revoked_at IS NULL AND \(condition)",
            arguments: [moment, value])
    }
}

/// A JWKS document as JSON objects, so that keys can be listed, added and removed by `kid`
/// without decoding every key type.
struct PublishedKeySet {
    var keys: [[String: Any]]

    init(keys: [[String: Any]]) { self.keys = keys }

    init?(json: String) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
            let keys = object["keys"] as? [[String: Any]]
        else { return nil }
        self.keys = keys
    }

    static func key(json: String) -> [String: Any]? {
        try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
    }

    var keyIDs: [String] { keys.compactMap { $0["kid"] as? String } }

    var json: String {
        let data = (try? JSONSerialization.data(withJSONObject: ["keys": keys], options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
