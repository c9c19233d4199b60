import Foundation
import GatehouseAuth
import GatehouseIAM
import Testing

/// The OAuth2 server over a real SQLite store, without HTTP: client secrets, scopes, refresh
/// families, and the issued token as an MQTT password.
@Suite("OAuth2 server")
struct OAuthServerTests {
    /// Counts what the server asked to end.
    final class RecordingSessions: SessionControl, @unchecked Sendable {
        var identities: [String] = []
        func endInvalidSessions(identityID: String) async -> Int {
            identities.append(identityID)
            return 0
        }
    }

    private let endpoint = "https://auth.test/oauth/token"

    private func clientWithSecret(_ temporary: TemporaryStore) throws -> String {
        try temporary.seed()
        try temporary.store.addIdentity(
            "app", tenant: "acme", kind: .application, roles: ["device", "viewer"], actor: "t")
        let secret = try #require(
            try temporary.store.createClient(
                "app", grants: [.clientCredentials], secret: true, keys: PublicKeySource(),
                hasher: PasswordHasher(costExponent: 10), actor: "t"))
        return secret
    }

    @Test("client credentials: the token is a JWT the jwt authenticator accepts with the granted roles only")
    func clientCredentialsTokenIsAnMQTTPassword() async throws {
        let temporary = try TemporaryStore()
        let secret = try clientWithSecret(temporary)
        let server = OAuthServer(store: temporary.store, fetcher: nil)
        let issued = try await server.token(
            TokenRequest(
                grantType: "client_credentials", scope: "viewer",
                client: .secret(clientID: "app", secret: secret), tokenEndpoint: endpoint)
        ).get()
        #expect(issued.scope == "viewer" && issued.refreshToken == nil && issued.expiresIn == 900)
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        let outcome = await authenticator.authenticate(credentials("app-1", password: issued.accessToken))
        #expect(outcome.principal?.roles == ["viewer"] && outcome.principal?.username == "app")
    }

    @Test("refusals: wrong secret, unknown client, a scope not held, a grant not allowed, an unknown grant type")
    func refusals() async throws {
        let temporary = try TemporaryStore()
        let secret = try clientWithSecret(temporary)
        let server = OAuthServer(store: temporary.store, fetcher: nil)
        func code(_ request: TokenRequest) async -> OAuthError.Code? {
            if case .failure(let error) = await server.token(request) { return error.code }
            return nil
        }
        #expect(
            await code(
                .init(
                    grantType: "client_credentials", client: .secret(clientID: "app", secret: "no"),
                    tokenEndpoint: endpoint))
                == .invalidClient)
        #expect(
            await code(
                .init(
                    grantType: "client_credentials", client: .secret(clientID: "ghost", secret: secret),
                    tokenEndpoint: endpoint))
                == .invalidClient)
        #expect(
            await code(
                .init(
                    grantType: "client_credentials", scope: "admin", client: .secret(clientID: "app", secret: secret),
                    tokenEndpoint: endpoint))
                == .invalidScope)
        #expect(
            await code(.init(grantType: "client_credentials", tokenEndpoint: endpoint)) == .invalidClient)
        #expect(await code(.init(grantType: "password", tokenEndpoint: endpoint)) == .unsupportedGrantType)
        #expect(await code(.init(grantType: nil, tokenEndpoint: endpoint)) == .invalidRequest)
        #expect(
            await code(.init(grantType: OAuthGrant.jwtBearer.grantType, assertion: "a.b.c", tokenEndpoint: endpoint))
                == .invalidGrant)
    }

    @Test("a client needs a way to authenticate for its grants; users cannot be clients")
    func clientCreationRules() throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        #expect(throws: IAMError.self) {
            try temporary.store.createClient(
                "sensor-1", grants: [.jwtBearer], secret: true, keys: PublicKeySource(), actor: "t")
        }
        #expect(throws: IAMError.self) {
            try temporary.store.createClient(
                "alice", grants: [.clientCredentials], secret: true, keys: PublicKeySource(), actor: "t")
        }
        #expect(throws: IAMError.self) {
            try temporary.store.createClient(
                "sensor-1", grants: [.jwtBearer], secret: false, keys: PublicKeySource(jwksURI: "http://plain"),
                actor: "t")
        }
    }

    @Test("revoking an access token refuses it at CONNECT and asks for its sessions to end")
    func revokedAccessTokenIsRefused() async throws {
        let temporary = try TemporaryStore()
        let secret = try clientWithSecret(temporary)
        let sessions = RecordingSessions()
        let server = OAuthServer(store: temporary.store, fetcher: nil, sessions: sessions)
        let issued = try await server.token(
            TokenRequest(
                grantType: "client_credentials", client: .secret(clientID: "app", secret: secret),
                tokenEndpoint: endpoint)
        ).get()
        #expect(await server.introspect(issued.accessToken, requester: "app").active)
        #expect(await !server.introspect(issued.accessToken, requester: "someone-else").active)
        try await server.revoke(issued.accessToken, client: "app")
        #expect(sessions.identities.count == 1)
        #expect(await server.introspect(issued.accessToken, requester: nil) == .inactive)
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        #expect(await authenticator.authenticate(credentials("app-1", password: issued.accessToken)).principal == nil)
    }
}
