import Crypto
import Foundation
import GatehouseAuth
import GatehouseCertificates
import GatehouseIAM
import JWTKit
import Testing

@Suite("token and password authenticators")
struct TokenAndPasswordTests {
    @Test("a token authenticates its identity with its tenant and roles; any other token is refused")
    func token() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        let authenticator = TokenAuthenticator(store: store, logger: temporary.logger)
        let created = try store.createToken(for: "alice", actor: "t")
        let principal = try #require(await authenticator.authenticate(credentials(password: created.token)).principal)
        #expect(
            principal.username == "alice" && principal.tenant == "acme" && principal.roles == ["operator", "viewer"])
        #expect(principal.credentialID == created.credential.id && principal.clientIdentifier == "c1")
        #expect(
            await authenticator.authenticate(credentials(username: "alice", password: created.token)).principal != nil)

        var tampered = Array(created.token)
        tampered[10] = tampered[10] == "A" ? "B" : "A"
        #expect(await authenticator.authenticate(credentials(password: String(tampered))) == .rejected)
        #expect(
            await authenticator.authenticate(credentials(username: "sensor-1", password: created.token)) == .rejected)
        #expect(await authenticator.authenticate(credentials(password: "not a token")) == .skipped)
        #expect(await authenticator.authenticate(credentials()) == .skipped)
    }

    @Test("revoked, expired, disabled identity or tenant, disallowed client id: refused")
    func tokenRefusals() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        let authenticator = TokenAuthenticator(store: store, logger: temporary.logger)
        let revoked = try store.createToken(for: "sensor-1", actor: "t")
        try store.revokeCredential(revoked.credential.id, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: revoked.token)) == .rejected)

        let expired = try store.createToken(
            for: "sensor-1", expiresAt: Int64(Date().timeIntervalSince1970) - 1, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: expired.token)) == .rejected)

        let good = try store.createToken(
            for: "sensor-1", expiresAt: Int64(Date().timeIntervalSince1970) + 60, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: good.token)).principal?.expiresAt != nil)
        try store.setIdentityEnabled("sensor-1", false, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: good.token)) == .rejected)
        try store.setIdentityEnabled("sensor-1", true, actor: "t")
        try store.setTenantEnabled("acme", false, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: good.token)) == .rejected)
        try store.setTenantEnabled("acme", true, actor: "t")

        try store.setClientIDPattern("sensor-1", "%u-*", actor: "t")
        #expect(await authenticator.authenticate(credentials("sensor-1-a", password: good.token)).principal != nil)
        #expect(await authenticator.authenticate(credentials("sensor-2-a", password: good.token)) == .rejected)
    }

    @Test("a token limited to some roles carries only those")
    func limitedToken() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let created = try temporary.store.createToken(for: "alice", roles: ["viewer"], actor: "t")
        let authenticator = TokenAuthenticator(store: temporary.store, logger: temporary.logger)
        #expect(await authenticator.authenticate(credentials(password: created.token)).principal?.roles == ["viewer"])
    }

    @Test("a password is stored as scrypt with its parameters; unknown user and wrong password get the same answer")
    func password() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        try store.setPassword(
            "correct horse battery", for: "alice", hasher: PasswordHasher(costExponent: 10), actor: "t")
        let authenticator = PasswordAuthenticator(store: store, logger: temporary.logger)
        let accepted = await authenticator.authenticate(
            credentials(username: "alice", password: "correct horse battery"))
        #expect(accepted.principal?.username == "alice")
        #expect(await authenticator.authenticate(credentials(username: "alice", password: "wrong horse")) == .rejected)
        #expect(await authenticator.authenticate(credentials(username: "mallory", password: "whatever1")) == .rejected)
        #expect(await authenticator.authenticate(credentials(password: "no user name")) == .skipped)

        // A new password replaces the old one, which stops working.
        try store.setPassword(
            "battery staple horse", for: "alice", hasher: PasswordHasher(costExponent: 10), actor: "t")
        #expect(
            await authenticator.authenticate(credentials(username: "alice", password: "correct horse battery"))
                == .rejected)
        #expect(
            await authenticator.authenticate(credentials(username: "alice", password: "battery staple horse")).principal
                != nil)
    }

    @Test("the chain runs methods in order: skip passes on, reject stops")
    func chainOrder() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        let token = try store.createToken(for: "sensor-1", actor: "t")
        let tokenFirst = AuthenticatorChain([
            TokenAuthenticator(store: store, logger: temporary.logger),
            PasswordAuthenticator(store: store, logger: temporary.logger),
        ])
        // The token method accepts before the password method (which knows no password for sensor-1) runs.
        #expect(
            await tokenFirst.authenticate(credentials(username: "sensor-1", password: token.token)).principal != nil)
        let passwordFirst = AuthenticatorChain([
            PasswordAuthenticator(store: store, logger: temporary.logger),
            TokenAuthenticator(store: store, logger: temporary.logger),
        ])
        // The password method rejects the user name + token pair, and rejection stops the chain.
        #expect(await passwordFirst.authenticate(credentials(username: "sensor-1", password: token.token)) == .rejected)
        // Without a user name the password method skips, and the token method accepts.
        #expect(await passwordFirst.authenticate(credentials(password: token.token)).principal != nil)
    }

    @Test("a change in the store makes a connected principal invalid")
    func stillValid() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        let created = try store.createToken(for: "alice", actor: "t")
        let authenticator = TokenAuthenticator(store: store, logger: temporary.logger)
        let principal = try #require(await authenticator.authenticate(credentials(password: created.token)).principal)
        #expect(await store.isStillValid(principal))
        try store.grantRole("extra", to: "alice", actor: "t")
        #expect(await !store.isStillValid(principal))  // roles changed: the session must re-authenticate
        try store.revokeRole("extra", from: "alice", actor: "t")
        #expect(await store.isStillValid(principal))
        try store.revokeCredential(created.credential.id, actor: "t")
        #expect(await !store.isStillValid(principal))
        #expect(
            await store.isStillValid(
                Principal(identityID: "anonymous", username: "a", clientIdentifier: "c", tenant: "default", roles: [])))
    }
}

@Suite("failure back-off")
struct BackoffTests {
    struct Refuser: Authenticator {
        func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
            credentials.password == Array("good".utf8)
                ? .accepted(
                    Principal(identityID: "i", username: "u", clientIdentifier: "c", tenant: "t", roles: []))
                : .rejected
        }
    }

    @Test("each failure doubles the wait for that address and that user name; success clears it")
    func doubling() async {
        let throttled = ThrottledAuthenticator(
            Refuser(), backoff: .init(base: .milliseconds(1), maximum: .milliseconds(8)))
        let attempt = credentials(username: "u", password: "bad", address: "10.0.0.9")
        #expect(throttled.delay(for: attempt) == .zero)
        for expected in [1, 2, 4, 8, 8] {
            _ = await throttled.authenticate(attempt)
            #expect(throttled.delay(for: attempt) == .milliseconds(expected))
        }
        // Another address with the same user name waits as long; another user from a fresh address does not.
        #expect(throttled.delay(for: credentials(username: "u", address: "10.0.0.10")) == .milliseconds(8))
        #expect(throttled.delay(for: credentials(username: "v", address: "10.0.0.11")) == .zero)
        #expect(
            await throttled.authenticate(credentials(username: "u", password: "good", address: "10.0.0.9")).principal
                != nil)
        #expect(throttled.delay(for: attempt) == .zero)
    }

    @Test("a failure is forgotten after the quiet period: the next attempt does not wait")
    func forgetting() async throws {
        let throttled = ThrottledAuthenticator(
            Refuser(), backoff: .init(base: .seconds(5), maximum: .seconds(5), forgetAfter: .milliseconds(50)))
        let attempt = credentials(username: "u", password: "bad", address: "10.0.0.9")
        _ = await throttled.authenticate(attempt)
        #expect(throttled.delay(for: attempt) == .seconds(5))
        try await Task.sleep(for: .milliseconds(80))
        #expect(throttled.delay(for: attempt) == .zero)
        let good = credentials(username: "u", password: "good", address: "10.0.0.9")
        #expect(await throttled.authenticate(good).principal != nil)
    }
}
