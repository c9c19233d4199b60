import Foundation
import GRDB
public import GatehouseAuth
import JWTKit
import NIOConcurrencyHelpers

/// The token endpoint's lifetimes and limits.
public struct OAuthSettings: Sendable, Equatable {
    /// Seconds an access token (a JWT that is also an MQTT password) stays valid.
    public var accessTokenLifetime: Int64 = 900
    public var refreshTokenLifetime: Int64 = 30 * 86_400
    /// The longest `exp − iat` of an assertion.
    public var maximumAssertionLifetime: Int64 = 600
    /// Seconds in which presenting a used refresh token again (a client retrying after a lost
    /// response) gets the same successor instead of revoking the family.
    public var refreshRetryWindow: Int64 = 5
    /// Seconds a JWKS fetched from a `jwks_uri` is used before it is fetched again.
    public var jwksCacheSeconds: Int64 = 300

    public init() {}
}

/// How a client authenticated at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).
public enum ClientAuthentication: Sendable, Equatable {
    case none
    /// `client_secret_basic` or `client_secret_post`.
    case secret(clientID: String, secret: String)
    /// `private_key_jwt`: an assertion signed with one of the client's registered keys.
    case assertion(clientID: String?, assertion: String)
}

extension ClientAuthentication {
    /// The client id the request claims, before it is verified: for rate limits and logs.
    public var claimedID: String? {
        switch self {
        case .none: nil
        case .secret(let clientID, _): clientID
        case .assertion(let clientID, let assertion):
            clientID ?? CompactJWT(Array(assertion.utf8))?.claims.string("iss")
        }
    }
}

/// A token request, its form fields already read.
public struct TokenRequest: Sendable {
    public var grantType: String?
    public var scope: String?
    public var assertion: String?
    public var refreshToken: String?
    public var client: ClientAuthentication
    /// The token endpoint's URL, which assertions must name in `aud`.
    public var tokenEndpoint: String

    public init(
        grantType: String?, scope: String? = nil, assertion: String? = nil, refreshToken: String? = nil,
        client: ClientAuthentication = .none, tokenEndpoint: String
    ) {
        self.grantType = grantType
        self.scope = scope
        self.assertion = assertion
        self.refreshToken = refreshToken
        self.client = client
        self.tokenEndpoint = tokenEndpoint
    }
}

public struct TokenResponse: Sendable, Equatable {
    public var accessToken: String
    public var expiresIn: Int64
    public var scope: String
    public var refreshToken: String?
    /// Who the token was issued to: the client id, for logs and rate limits.
    public var clientID: String
}

/// An RFC 7662 introspection answer; everything but `active` is absent for an inactive token.
public struct Introspection: Sendable, Equatable, Encodable {
    public var active: Bool
    public var scope: String?
    public var clientID: String?
    public var username: String?
    public var sub: String?
    public var tenant: String?
    public var exp: Int64?
    public var iat: Int64?
    public var jti: String?
    public var iss: String?
    public var tokenType: String?

    public static let inactive = Introspection(active: false)

    init(active: Bool) { self.active = active }

    enum CodingKeys: String, CodingKey {
        case active, scope, username, sub, tenant, exp, iat, jti, iss
        case clientID = "client_id"
        case tokenType = "token_type"
    }
}

/// The OAuth2 authorization server over the identity store: client credentials, JWT-bearer
/// assertions (RFC 7523), refresh tokens rotated on every use, revocation (RFC 7009) and
/// introspection (RFC 7662). Its access tokens are Gatehouse JWTs, which the `jwt`
/// authenticator accepts as MQTT passwords. Store work runs on the store's threads.
public final class OAuthServer: Sendable {
    public let store: IdentityStore
    public let settings: OAuthSettings
    private let keys: PublicKeyCache
    private let verifier: AssertionVerifier
    /// Where revocations end MQTT sessions at once (the enforcer's poll does it otherwise).
    public let sessions: (any SessionControl)?
    /// The successor handed out for each refresh token used in the last retry window.
    private let successors = NIOLockedValueBox<[Data: Successor]>([:])

    private struct Successor {
        var refreshToken: String
        var until: Int64
    }

    public init(
        store: IdentityStore, settings: OAuthSettings = OAuthSettings(), fetcher: (any JWKSFetcher)?,
        sessions: (any SessionControl)? = nil
    ) {
        self.store = store
        self.settings = settings
        self.sessions = sessions
        keys = PublicKeyCache(fetcher: fetcher, maximumAge: .seconds(settings.jwksCacheSeconds))
        verifier = AssertionVerifier(store: store, keys: keys, maximumLifetime: settings.maximumAssertionLifetime)
    }

    // MARK: The token endpoint

    public func token(_ request: TokenRequest) async -> Result<TokenResponse, OAuthError> {
        do { return .success(try await grant(request)) } catch let error as OAuthError {
            return .failure(error)
        } catch {
            return .failure(OAuthError(.temporarilyUnavailable, "the identity store failed"))
        }
    }

    private func grant(_ request: TokenRequest) async throws -> TokenResponse {
        switch request.grantType {
        case nil, "":
            throw OAuthError(.invalidRequest, "'grant_type' is missing")
        case OAuthGrant.clientCredentials.grantType:
            // RFC 6749 §4.4: the client authenticates; no refresh token is issued (§4.4.3).
            guard request.client != .none else {
                throw OAuthError(.invalidClient, "client_credentials needs client authentication")
            }
            let (client, pending) = try await authenticateClient(request.client, tokenEndpoint: request.tokenEndpoint)
            guard client.grants.contains(.clientCredentials) else {
                throw OAuthError(.unauthorizedClient, "'\(client.clientID)' may not use client_credentials")
            }
            let scope = try Self.grantedScope(request.scope, held: client.identity.roles, allowed: client.scopes)
            return try await issue(
                to: client.identity, scope: scope, clientID: client.clientID, refresh: nil, assertions: pending)
        case OAuthGrant.jwtBearer.grantType:
            guard let assertion = request.assertion, !assertion.isEmpty else {
                throw OAuthError(.invalidRequest, "'assertion' is missing")
            }
            let authenticated = try await authenticatedIfPresented(request)
            return try await bearer(
                assertion, scope: request.scope, authenticated: authenticated, tokenEndpoint: request.tokenEndpoint)
        case OAuthGrant.refreshToken.grantType:
            guard let presented = request.refreshToken, !presented.isEmpty else {
                throw OAuthError(.invalidRequest, "'refresh_token' is missing")
            }
            let authenticated = try await authenticatedIfPresented(request)
            return try await refresh(presented, scope: request.scope, authenticated: authenticated)
        case let other?:
            throw OAuthError(.unsupportedGrantType, "grant_type '\(other)' is not supported")
        }
    }

    /// Client authentication where the grant makes it optional (RFC 7523 §2.1, RFC 6749 §6):
    /// none presented is nil; one presented must succeed.
    private func authenticatedIfPresented(_ request: TokenRequest) async throws -> (
        client: OAuthClient, assertions: [PendingAssertion]
    )? {
        guard request.client != .none else { return nil }
        return try await authenticateClient(request.client, tokenEndpoint: request.tokenEndpoint)
    }

    /// RFC 7523 §2.1: the assertion's issuer is a client asserting itself (`iss` = `sub`,
    /// verified with its registered keys) or a trusted assertion issuer asserting a subject.
    private func bearer(
        _ assertion: String, scope: String?, authenticated: (client: OAuthClient, assertions: [PendingAssertion])?,
        tokenEndpoint: String
    ) async throws -> TokenResponse {
        let parties: ParsedAssertion
        switch ParsedAssertion.parse(assertion) {
        case .failure(let refusal): throw OAuthError(.invalidGrant, refusal.reason)
        case .success(let found): parties = found
        }
        // Who signed it, and whom it names, in one read.
        let context = try await store.offloaded { [store, issuer = parties.issuer, subject = parties.subject] in
            try store.bearerContext(issuer: issuer, subject: subject)
        }
        let keySource: PublicKeySource
        switch context.asserter {
        case nil:
            throw OAuthError(.invalidGrant, "'\(parties.issuer)' is neither a client with keys nor a trusted issuer")
        case .client(let client):
            guard parties.subject == parties.issuer else {
                throw OAuthError(.invalidGrant, "a client's own assertion must have 'sub' equal to 'iss'")
            }
            guard client.enabled, client.grants.contains(.jwtBearer) else {
                throw OAuthError(.unauthorizedClient, "'\(client.clientID)' may not use the jwt-bearer grant")
            }
            keySource = client.keys
        case .issuer(let issuer):
            guard issuer.mayAssert(parties.subject) else {
                throw OAuthError(.invalidGrant, "'\(issuer.issuer)' may not assert '\(parties.subject)'")
            }
            keySource = issuer.keys
        }
        let verified: AssertionVerifier.Verified
        switch await verifier.verify(parties, keySource: keySource, audience: tokenEndpoint) {
        case .failure(let refusal): throw OAuthError(.invalidGrant, refusal.reason)
        case .success(let found): verified = found
        }
        guard let subject = context.subject else {
            throw OAuthError(.invalidGrant, "the subject '\(parties.subject)' is unknown or disabled")
        }
        // The subject's own client settings limit its scopes and say whether it gets refresh tokens.
        let subjectClient = context.subjectClient
        let granted = try Self.grantedScope(scope, held: subject.roles, allowed: subjectClient?.scopes)
        let refresh = subjectClient.map { $0.enabled && $0.grants.contains(.refreshToken) } == true
        let clientID = authenticated?.client.clientID ?? subjectClient?.clientID ?? parties.issuer
        return try await issue(
            to: subject, scope: granted, clientID: clientID, refresh: refresh ? randomID("fam") : nil,
            assertions: (authenticated?.assertions ?? []) + [verified.pending])
    }

    /// RFC 6749 §6 with rotation: each use returns a new refresh token; a used one presented
    /// again within the retry window gets the same successor, after it revokes its family.
    private func refresh(
        _ presented: String, scope: String?, authenticated: (client: OAuthClient, assertions: [PendingAssertion])?
    ) async throws -> TokenResponse {
        let digest = APIToken.storedDigest(presented)
        let window = settings.refreshRetryWindow
        let use = try await store.offloaded { [store] in try store.useRefreshToken(digest, retryWindow: window) }
        let record: RefreshRecord
        switch use {
        case .unknown: throw OAuthError(.invalidGrant, "the refresh token is not valid")
        case .expired: throw OAuthError(.invalidGrant, "the refresh token has expired")
        case .revoked: throw OAuthError(.invalidGrant, "the refresh token was revoked")
        case .reused(let identityID):
            await sessions?.endInvalidSessions(identityID: identityID)
            throw OAuthError(.invalidGrant, "the refresh token was used before: its whole family is revoked")
        case .retried(let used):
            guard let successor = successors.withLockedValue({ $0[digest] }), successor.until >= now() else {
                throw OAuthError(.invalidGrant, "the refresh token was used already")
            }
            try Self.check(used, authenticated: authenticated?.client)
            let identity = try await activeSubject(of: used)
            var response = try await issue(
                to: identity, scope: used.scope.filter(identity.roles.contains), clientID: used.clientID,
                refresh: nil, family: used.family, assertions: authenticated?.assertions ?? [])
            response.refreshToken = successor.refreshToken
            return response
        case .fresh(let fresh): record = fresh
        }
        try Self.check(record, authenticated: authenticated?.client)
        let identity = try await activeSubject(of: record)
        let requested = try Self.grantedScope(scope, held: record.scope, allowed: nil)
        let response = try await issue(
            to: identity, scope: requested.filter(identity.roles.contains), clientID: record.clientID,
            refresh: record.family, assertions: authenticated?.assertions ?? [])
        if let successor = response.refreshToken {
            let until = now() + window
            successors.withLockedValue { successors in
                successors = successors.filter { $0.value.until >= now() }
                successors[digest] = Successor(refreshToken: successor, until: until)
            }
        }
        return response
    }

    private static func check(_ record: RefreshRecord, authenticated: OAuthClient?) throws {
        if let authenticated, authenticated.clientID != record.clientID {
            throw OAuthError(.invalidGrant, "the refresh token was issued to another client")
        }
    }

    private func activeSubject(of record: RefreshRecord) async throws -> Identity {
        let identity = try await store.offloaded { [store] in
            try store.read { db in try IdentityStore.activeIdentity(db, id: record.identityID) }
        }
        guard let identity else { throw OAuthError(.invalidGrant, "the token's identity is disabled") }
        let client = try await store.offloaded { [store] in
            try store.read { db in try IdentityStore.client(db, named: record.clientID) }
        }
        if let client, !client.enabled { throw OAuthError(.invalidGrant, "the client is disabled") }
        return identity
    }

    /// The scope granted: the requested roles, each held by the identity and allowed for the
    /// client (groups are scopes, seed 002); none requested means all of them.
    static func grantedScope(_ requested: String?, held: [String], allowed: [String]?) throws -> [String] {
        let available = Set(held).intersection(allowed ?? held)
        let asked = (requested ?? "").split(separator: " ").map(String.init)
        guard !asked.isEmpty else { return available.sorted() }
        let refused = Set(asked).subtracting(available)
        guard refused.isEmpty else {
            throw OAuthError(.invalidScope, "scope not granted: \(refused.sorted().joined(separator: " "))")
        }
        return Set(asked).sorted()
    }

    /// Signs the access token, then records it with the assertions it used and any new
    /// refresh token in one write.
    private func issue(
        to identity: Identity, scope: [String], clientID: String, refresh newFamily: String?, family: String? = nil,
        assertions: [PendingAssertion]
    ) async throws -> TokenResponse {
        let access = try await JWTIssuer(store: store).signAccessToken(
            identity: identity, roles: scope, lifetime: settings.accessTokenLifetime, clientID: clientID,
            family: newFamily ?? family)
        let refresh = newFamily == nil ? nil : (scope: scope, lifetime: settings.refreshTokenLifetime)
        let refreshToken = try await store.offloaded { [store] in
            try store.recordIssuance(access, assertions: assertions, refresh: refresh)
        }
        return TokenResponse(
            accessToken: access.token, expiresIn: settings.accessTokenLifetime, scope: scope.joined(separator: " "),
            refreshToken: refreshToken, clientID: clientID)
    }

    // MARK: Client authentication

    /// The client behind a secret or a `private_key_jwt` assertion (its `jti` recorded now);
    /// `invalid_client` with the same words for an unknown client and a wrong secret.
    public func authenticate(_ authentication: ClientAuthentication, tokenEndpoint: String) async throws
        -> OAuthClient
    {
        let (client, assertions) = try await authenticateClient(authentication, tokenEndpoint: tokenEndpoint)
        guard try await store.offloaded({ [store] in try store.recordAssertions(assertions) }) else {
            throw OAuthError(.invalidClient, "client assertion refused: its 'jti' was used before")
        }
        return client
    }

    /// As `authenticate`, leaving a client assertion's `jti` to the write that issues the token.
    private func authenticateClient(_ authentication: ClientAuthentication, tokenEndpoint: String) async throws
        -> (client: OAuthClient, assertions: [PendingAssertion])
    {
        let refused = OAuthError(.invalidClient, "client authentication failed")
        switch authentication {
        case .none:
            throw OAuthError(.invalidClient, "client authentication is required")
        case .secret(let clientID, let secret):
            let stored = try await store.offloaded { [store] in try store.clientSecret(clientID) }
            guard let stored, stored.client.enabled else { throw refused }
            // scrypt: on the store's threads, never on an event loop.
            let matches = try await store.offloaded {
                PasswordHasher.verify(Array(secret.utf8), hash: stored.hash, kdf: stored.kdf)
            }
            guard matches else { throw refused }
            return (stored.client, [])
        case .assertion(let claimedID, let assertion):
            guard case .success(let parties) = ParsedAssertion.parse(assertion) else { throw refused }
            // RFC 7523 §3: iss and sub are both the client id.
            guard parties.issuer == parties.subject, claimedID == nil || claimedID == parties.issuer else {
                throw OAuthError(.invalidClient, "a client assertion must have 'iss' and 'sub' equal to the client id")
            }
            let client = try await store.offloaded { [store, issuer = parties.issuer] in
                try store.activeClient(named: issuer)
            }
            guard let client, !client.keys.isEmpty else { throw refused }
            switch await verifier.verify(parties, keySource: client.keys, audience: tokenEndpoint) {
            case .failure(let refusal): throw OAuthError(.invalidClient, "client assertion refused: \(refusal.reason)")
            case .success(let verified): return (client, [verified.pending])
            }
        }
    }

    // MARK: Revocation and introspection

    /// RFC 7009: revokes a refresh token (with every access token of its family) or an access
    /// token; unknown tokens are not an error. With `client`, only that client's tokens.
    public func revoke(_ token: String, client: String?) async throws {
        if token.hasPrefix(SecretPrefix.refreshToken) {
            let digest = APIToken.storedDigest(token)
            let identityID = try await store.offloaded { [store] in
                try store.revokeRefreshFamily(digest, client: client)
            }
            if let identityID { await sessions?.endInvalidSessions(identityID: identityID) }
            return
        }
        guard let claims = await verifiedAccessToken(token), let tokenID = claims.string("jti") else { return }
        if let client, claims.string("client_id") != client { return }
        let identityID = try? await store.offloaded { [store] in
            try JWTIssuer.revoke(tokenID, in: store, actor: "oauth:revoke")
        }
        if let identityID { await sessions?.endInvalidSessions(identityID: identityID) }
    }

    /// RFC 7662. `requester` nil is an admin, who sees every token; a client sees only its own.
    public func introspect(_ token: String, requester: String?) async -> Introspection {
        let result: Introspection
        if token.hasPrefix(SecretPrefix.refreshToken) {
            let digest = APIToken.storedDigest(token)
            result = (try? await store.offloaded { [store] in try store.introspectRefreshToken(digest) }) ?? .inactive
        } else if let claims = await verifiedAccessToken(token), let expiry = claims.number("exp"),
            Int64(expiry) > now(), let tokenID = claims.string("jti"),
            let subject = claims.string("sub"),
            (try? await store.offloaded({ [store] in try store.accessTokenIsActive(tokenID, subject: subject) }))
                == true
        {
            var active = Introspection(active: true)
            active.scope = claims.string("scope") ?? claims.strings("roles").joined(separator: " ")
            active.clientID = claims.string("client_id")
            active.username = subject
            active.sub = subject
            active.tenant = claims.string("tenant")
            active.exp = Int64(expiry)
            active.iat = claims.number("iat").map { Int64($0) }
            active.jti = tokenID
            active.iss = claims.string("iss")
            active.tokenType = "Bearer"
            result = active
        } else {
            result = .inactive
        }
        if let requester, result.active, result.clientID != requester { return .inactive }
        return result
    }

    /// The claims of a JWT this server signed, if its signature verifies with a published key.
    private func verifiedAccessToken(_ token: String) async -> JWTClaims? {
        guard let parsed = CompactJWT(Array(token.utf8)), store.isLocalIssuer(parsed.claims.string("iss") ?? ""),
            let published = try? await store.offloaded({ [store] in try JWTIssuer.publishedKeys(in: store) })
        else { return nil }
        guard
            case .success(let key) = await keys.key(
                for: PublicKeySource(jwks: published), keyID: parsed.keyID, algorithm: parsed.algorithm),
            JWTAlgorithmValue(key).verifies(parsed)
        else { return nil }
        return parsed.claims
    }

    /// The JWKS of `/.well-known/jwks.json`; made with a first signing key if there is none yet.
    public func publishedKeys() async throws -> String {
        try await store.offloaded { [store] in
            _ = try JWTIssuer.currentKey(in: store, actor: "gatehouse:oauth")
            return try JWTIssuer.publishedKeys(in: store)
        }
    }
}
