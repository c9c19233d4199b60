import Foundation
import GRDB
public import GatehouseAuth
import NIOConcurrencyHelpers

// Refresh tokens (`ghr_`, stored as SHA-256) descend from the one a JWT-bearer grant issued;
// they form a family, revoked together.

/// A stored refresh token, without its secret.
struct RefreshRecord: Sendable {
    var family: String
    var identityID: String
    var clientID: String
    var scope: [String]
}

/// What presenting a refresh token found.
enum RefreshUse: Sendable {
    case unknown, expired, revoked
    /// First use: it is now used, and a successor may be issued.
    case fresh(RefreshRecord)
    /// Used within the retry window: the same successor may be returned.
    case retried(RefreshRecord)
    /// Used before the retry window: the family (of this identity) has been revoked.
    case reused(identityID: String)
}

/// Who signed a JWT-bearer assertion.
enum Asserter: Sendable {
    case client(OAuthClient)
    case issuer(AssertionIssuer)
}

extension IdentityStore {
    /// Records what one token response hands out, in one transaction: the assertions it used
    /// (refused as a replay when seen before), the access token, and a new refresh token when
    /// `refresh` says so. Returns the refresh token.
    func recordIssuance(
        _ access: IssuedAccessToken, assertions: [PendingAssertion], refresh: (scope: [String], lifetime: Int64)?
    ) throws -> String? {
        try write(keepsSnapshot: true) { db in
            guard try Self.recordAssertions(db, assertions) else {
                throw OAuthError(.invalidGrant, "the assertion's 'jti' was used before")
            }
            try access.record(db)
            guard let refresh, let family = access.family else { return nil }
            let token = APIToken.generate(prefix: SecretPrefix.refreshToken)
            let insert = try db.cachedStatement(
                sql: """
                    INSERT INTO refresh_token (id, token_hash, family, identity_id, client_id, scope, issued_at,
                        expires_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """)
            try insert.execute(arguments: [
                randomID("rt"), APIToken.storedDigest(token), family, access.identityID, access.clientID,
                refresh.scope.joined(separator: " "), now(), now() + refresh.lifetime,
            ])
            return token
        }
    }

    /// Marks the token used, in one transaction with the check, so that two requests racing
    /// with the same token cannot both get a fresh successor.
    func useRefreshToken(_ digest: Data, retryWindow: Int64) throws -> RefreshUse {
        let (use, revokedFamily) = try write(keepsSnapshot: true) { db -> (RefreshUse, Bool) in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT * FROM refresh_token WHERE token_hash = ?", arguments: [digest])
            else { return (.unknown, false) }
            let record = RefreshRecord(
                family: row["family"], identityID: row["identity_id"], clientID: row["client_id"],
                scope: (row["scope"] as String).split(separator: " ").map(String.init))
            let moment = now()
            if row["revoked_at"] as Int64? != nil { return (.revoked, false) }
            if (row["expires_at"] as Int64) <= moment { return (.expired, false) }
            guard let usedAt = row["used_at"] as Int64? else {
                try db.execute(
                    sql: "UPDATE refresh_token SET used_at = ? WHERE token_hash = ?", arguments: [moment, digest])
                return (.fresh(record), false)
            }
            if moment - usedAt <= retryWindow { return (.retried(record), false) }
            // A stolen token and its rightful holder both used it: neither keeps the family.
            try Self.revokeRefreshTokens(db, where: "family = ?", record.family, at: moment)
            let name = try String.fetchOne(
                db, sql: "SELECT name FROM identity WHERE id = ?", arguments: [record.identityID])
            try Self.audit(
                db, actor: "oauth:refresh", action: "refresh.reuse", subject: name ?? record.identityID,
                identityID: record.identityID, detail: "family=\(record.family) client=\(record.clientID)")
            return (.reused(identityID: record.identityID), true)
        }
        if revokedFamily { cachedSnapshot.withLockedValue { $0 = nil } }
        return use
    }

    /// Revokes the family of a refresh token (RFC 7009 §2.1: its access tokens too). Nothing
    /// happens for an unknown token or another client's.
    func revokeRefreshFamily(_ digest: Data, client: String?) throws -> String? {
        // A plain write: the revoked access tokens are in the snapshot the authenticators read.
        try write { db -> String? in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT refresh_token.family, refresh_token.identity_id, refresh_token.client_id, identity.name
                        FROM refresh_token JOIN identity ON identity.id = refresh_token.identity_id
                        WHERE token_hash = ?
                        """,
                    arguments: [digest])
            else { return nil }
            if let client, client != row["client_id"] as String { return nil }
            let family: String = row["family"]
            try Self.revokeRefreshTokens(db, where: "family = ?", family, at: now())
            try Self.audit(
                db, actor: "oauth:revoke", action: "refresh.revoke", subject: row["name"],
                identityID: row["identity_id"], detail: "family=\(family)")
            return row["identity_id"]
        }
    }

    func introspectRefreshToken(_ digest: Data) throws -> Introspection {
        try read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT refresh_token.*, identity.name, identity.tenant, identity.enabled FROM refresh_token
                        JOIN identity ON identity.id = refresh_token.identity_id
                        JOIN tenant ON tenant.name = identity.tenant AND tenant.enabled
                        WHERE token_hash = ? AND revoked_at IS NULL AND used_at IS NULL AND expires_at > ?
                        """,
                    arguments: [digest, now()]),
                row["enabled"] as Bool
            else { return .inactive }
            var result = Introspection(active: true)
            result.scope = row["scope"]
            result.clientID = row["client_id"]
            result.username = row["name"]
            result.sub = row["name"]
            result.tenant = row["tenant"]
            result.exp = row["expires_at"]
            result.iat = row["issued_at"]
            result.iss = issuerIdentifier
            result.tokenType = "refresh_token"
            return result
        }
    }

    /// An issued access token not revoked, whose identity is still enabled in an enabled tenant.
    func accessTokenIsActive(_ tokenID: String, subject: String) throws -> Bool {
        try read { db in
            try Bool.fetchOne(
                db,
                sql: """
                    SELECT 1 FROM issued_jwt JOIN identity ON identity.id = issued_jwt.identity_id
                    JOIN tenant ON tenant.name = identity.tenant
                    WHERE jti = ? AND revoked_at IS NULL AND identity.name = ? AND identity.enabled AND tenant.enabled
                    """,
                arguments: [tokenID, subject]) == true
        }
    }

    /// Who signed a JWT-bearer assertion, and the subject it names (active, in the issuer's
    /// tenant when it has one) with that subject's client settings: one read per grant.
    func bearerContext(issuer: String, subject: String) throws -> (
        asserter: Asserter?, subject: Identity?, subjectClient: OAuthClient?
    ) {
        try read { db in
            let asserter: Asserter?
            if let client = try Self.client(db, named: issuer), !client.keys.isEmpty {
                asserter = .client(client)
            } else {
                asserter = try Row.fetchOne(
                    db, sql: "SELECT * FROM assertion_issuer WHERE issuer = ?", arguments: [issuer]
                ).map { .issuer(Self.assertionIssuer($0)) }
            }
            let tenant: String? = if case .issuer(let trusted) = asserter { trusted.tenant } else { nil }
            guard
                let id = try String.fetchOne(
                    db, sql: "SELECT id FROM identity WHERE name = ? AND (? IS NULL OR tenant = ?)",
                    arguments: [subject, tenant, tenant]),
                let identity = try Self.activeIdentity(db, id: id)
            else { return (asserter, nil, nil) }
            return (asserter, identity, try Self.client(db, named: identity.name))
        }
    }

    static func activeIdentity(_ db: Database, id: String) throws -> Identity? {
        guard
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT identity.* FROM identity JOIN tenant ON tenant.name = identity.tenant
                    WHERE identity.id = ? AND identity.enabled AND tenant.enabled
                    """,
                arguments: [id])
        else { return nil }
        return try identity(db, row: row)
    }

    /// An enabled client whose identity is active.
    func activeClient(named name: String) throws -> OAuthClient? {
        try read { db in
            guard let client = try Self.client(db, named: name), client.enabled,
                try Self.activeIdentity(db, id: client.identity.id) != nil
            else { return nil }
            return client
        }
    }

    func clientSecret(_ name: String) throws -> (client: OAuthClient, hash: [UInt8], kdf: String)? {
        guard let client = try activeClient(named: name) else { return nil }
        return try read { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT secret_hash, secret_kdf FROM oauth_client WHERE identity_id = ?",
                    arguments: [client.identity.id]),
                let hash = row["secret_hash"] as Data?, let kdf = row["secret_kdf"] as String?
            else { return nil }
            return (client, Array(hash), kdf)
        }
    }
}

extension IdentityStore {
    /// The principal of an opaque API token presented as an HTTP bearer credential (the admin
    /// API, introspection), checked like the `token` authenticator checks an MQTT password.
    public func principal(bearerToken token: String) async -> Principal? {
        guard APIToken.looksLikeToken(Array(token.utf8)) else { return nil }
        let digest = APIToken.storedDigest(token)
        // As the authenticators decide: a miss is decided again if the CLI changed the store since.
        let verdict = await decideWithFreshState { snapshot in
            guard let match = snapshot.tokens[digest],
                let principal = match.principal(clientIdentifier: match.identity.name)
            else { return .failure(IAMError("unknown or revoked token")) }
            return .success(principal)
        }
        return try? verdict.get()
    }
}
