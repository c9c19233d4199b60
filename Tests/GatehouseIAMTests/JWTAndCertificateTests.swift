import Crypto
import Foundation
import GatehouseAuth
import GatehouseCertificates
import JWTKit
import Testing

@testable import GatehouseIAM

/// Claims an external issuer might put in its tokens; nil claims are left out.
struct ExternalClaims: JWTPayload {
    var iss: String?
    var aud: String?
    var sub: String?
    var tenant: String?
    var scope: String?
    var exp: Int?
    var nbf: Int?

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

private func base64URL(_ data: some Sequence<UInt8>) -> String {
    Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

private let now = Int(Date().timeIntervalSince1970)

@Suite("JWT authenticator")
struct JWTTests {
    /// A store with an external issuer whose ES256 key (kid k1) the test holds.
    private func externalIssuer() async throws -> (TemporaryStore, JWTKeyCollection, ES256PrivateKey) {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let key = ES256PrivateKey()
        let (x, y) = try #require(key.parameters)
        let jwk = #"{"kty":"EC","crv":"P-256","x":"\#(x)","y":"\#(y)","kid":"k1","alg":"ES256","use":"sig"}"#
        let issuer = TrustedIssuer(
            issuer: "https://idp.example", audience: "mqtt", jwks: jwk, rolesClaim: "scope")
        try await issuer.validateKeys()
        try temporary.store.addIssuer(issuer, actor: "t")
        let signer = JWTKeyCollection()
        await signer.add(ecdsa: key, kid: "k1")
        return (temporary, signer, key)
    }

    /// A seeded store with Gatehouse's own issuer and a JWT authenticator on it.
    private func ownIssuer() throws -> (TemporaryStore, JWTIssuer, JWTAuthenticator) {
        let temporary = try TemporaryStore()
        try temporary.seed()
        return (
            temporary, JWTIssuer(store: temporary.store),
            JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        )
    }

    private func claims(
        iss: String? = "https://idp.example", aud: String? = "mqtt", exp: Int? = now + 300, nbf: Int? = nil
    ) -> ExternalClaims {
        ExternalClaims(iss: iss, aud: aud, sub: "agent-7", tenant: "acme", scope: "operator viewer", exp: exp, nbf: nbf)
    }

    @Test("an external issuer's token maps subject, tenant and roles from its claims")
    func external() async throws {
        let (temporary, signer, _) = try await externalIssuer()
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        let token = try await signer.sign(claims(), kid: "k1")
        let principal = try #require(await authenticator.authenticate(credentials(password: token)).principal)
        #expect(
            principal.username == "agent-7" && principal.tenant == "acme" && principal.roles == ["operator", "viewer"])
        #expect(principal.identityID.hasPrefix("ext-") && principal.expiresAt == Int64(now + 300))
        // A local identity of the same name is not the external subject.
        #expect(principal.identityID != (try temporary.store.identity(named: "alice").id))
    }

    @Test(
        "expired, not yet valid, no exp, wrong audience, untrusted issuer: refused",
        arguments: [
            ("expired", now - 10, nil as Int?, "mqtt", "https://idp.example"),
            ("not yet valid", now + 300, now + 120, "mqtt", "https://idp.example"),
            ("wrong audience", now + 300, nil, "web", "https://idp.example"),
            ("untrusted issuer", now + 300, nil, "mqtt", "https://evil.example"),
        ])
    func refusals(what: String, exp: Int, nbf: Int?, aud: String, iss: String) async throws {
        let (temporary, signer, _) = try await externalIssuer()
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        let token = try await signer.sign(claims(iss: iss, aud: aud, exp: exp, nbf: nbf), kid: "k1")
        #expect(await authenticator.authenticate(credentials(password: token)) == .rejected, "\(what)")
        let noExpiry = try await signer.sign(claims(exp: nil), kid: "k1")
        #expect(await authenticator.authenticate(credentials(password: noExpiry)) == .rejected)
    }

    @Test("a tampered payload, alg none, and HS256 signed with the public key are refused")
    func forgeries() async throws {
        let (temporary, signer, key) = try await externalIssuer()
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        let token = try await signer.sign(claims(), kid: "k1")
        let parts = token.split(separator: ".").map(String.init)
        let promoted =
            #"{"iss":"https://idp.example","aud":"mqtt","sub":"agent-7","tenant":"acme","scope":"admin","exp":\#(now + 300)}"#
        let tampered = [parts[0], base64URL(Array(promoted.utf8)), parts[2]].joined(separator: ".")
        #expect(await authenticator.authenticate(credentials(password: tampered)) == .rejected)

        let none = base64URL(Array(#"{"alg":"none","typ":"JWT"}"#.utf8))
        #expect(
            await authenticator.authenticate(credentials(password: "\(none).\(parts[1])."))
                == .rejected)

        // Algorithm confusion: an HMAC keyed with the issuer's public key must not verify.
        let header = base64URL(Array(#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#.utf8))
        let publicPEM = key.publicKey.pemRepresentation
        let mac = HMAC<SHA256>.authenticationCode(
            for: Array("\(header).\(parts[1])".utf8), using: SymmetricKey(data: Array(publicPEM.utf8)))
        #expect(
            await authenticator.authenticate(credentials(password: "\(header).\(parts[1]).\(base64URL(mac))"))
                == .rejected)
    }

    @Test("revoking one issued JWT refuses it and invalidates its sessions; the identity's other JWTs stay valid")
    func revokeIssued() async throws {
        let (temporary, issuer, authenticator) = try ownIssuer()
        let store = temporary.store
        let kept = try await issuer.issue(for: "alice", lifetime: 600, actor: "t")
        let revoked = try await issuer.issue(for: "alice", lifetime: 600, actor: "t")
        let principal = try #require(await authenticator.authenticate(credentials(password: revoked)).principal)
        let listed = try JWTIssuer.issued(to: "alice", in: store)
        #expect(listed.count == 2 && listed.allSatisfy { $0.revokedAt == nil })
        let tokenID = try #require(principal.credentialID?.split(separator: "#").last.map(String.init))
        #expect(listed.first?.id == tokenID)  // newest first

        try JWTIssuer.revoke(tokenID, in: store, actor: "t")
        #expect(authenticator.authenticateImmediately(credentials(password: revoked)) == nil)
        #expect(await authenticator.authenticate(credentials(password: revoked)) == .rejected)
        #expect(await !store.isStillValid(principal))
        let other = try #require(await authenticator.authenticate(credentials(password: kept)).principal)
        #expect(await store.isStillValid(other))
        #expect(throws: IAMError.self) { try JWTIssuer.revoke(tokenID, in: store, actor: "t") }
        #expect(try JWTIssuer.issued(to: "alice", in: store).first?.revokedAt != nil)
        #expect(try store.auditLog().contains { $0.action == "jwt.revoke" && $0.subject == "alice" })
    }

    @Test("the broker's poll reports a change the CLI made only together with the snapshot that shows it")
    func changesFromAnotherProcess() async throws {
        let (temporary, issuer, authenticator) = try ownIssuer()
        let broker = temporary.store
        let jwt = try await issuer.issue(for: "alice", lifetime: 600, actor: "t")
        let principal = try #require(await authenticator.authenticate(credentials(password: jwt)).principal)
        let tokenID = try #require(principal.credentialID?.split(separator: "#").last.map(String.init))
        let seen = try broker.latestChange()

        let cli = try IdentityStore(path: broker.path)  // another connection to the same file
        try JWTIssuer.revoke(tokenID, in: cli, actor: "cli")
        // The broker's snapshot predates the revocation, so the session still looks valid: a
        // poll that marked the change seen now would never end it.
        #expect(await broker.isStillValid(principal))
        #expect(try broker.identitiesChanged(after: seen, through: seen).identityIDs.isEmpty)
        let changed = try await broker.changesToEnforce(after: seen)
        #expect(changed.latest == seen + 1 && changed.identityIDs == [principal.identityID])
        #expect(await !broker.isStillValid(principal))
        let again = try await broker.changesToEnforce(after: changed.latest)
        #expect(again.latest == changed.latest && again.identityIDs.isEmpty)
    }

    @Test("once a key is resolved, tokens verify without suspending; refusals always take the asynchronous way")
    func immediatePath() async throws {
        let (temporary, signer, _) = try await externalIssuer()
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        let first = try await signer.sign(claims(), kid: "k1")
        _ = try await temporary.store.snapshot()
        #expect(authenticator.authenticateImmediately(credentials(password: first)) == nil)  // key not resolved yet
        #expect(await authenticator.authenticate(credentials(password: first)).principal != nil)
        let second = try await signer.sign(claims(exp: now + 200), kid: "k1")
        for _ in 0..<2 {  // verified, then remembered
            let outcome = authenticator.authenticateImmediately(credentials(password: second))
            #expect(outcome?.principal?.username == "agent-7" && outcome?.principal?.expiresAt == Int64(now + 200))
        }
        let wrongAudience = try await signer.sign(claims(aud: "web"), kid: "k1")
        #expect(authenticator.authenticateImmediately(credentials(password: wrongAudience)) == nil)
        #expect(await authenticator.authenticate(credentials(password: wrongAudience)) == .rejected)

        // The header's alg must be the key's own, even with a valid ES256 signature.
        let parts = second.split(separator: ".").map(String.init)
        let relabelled = base64URL(Array(#"{"alg":"ES384","typ":"JWT","kid":"k1"}"#.utf8))
        let mislabelled = "\(relabelled).\(parts[1]).\(parts[2])"
        #expect(await authenticator.authenticate(credentials(password: mislabelled)) == .rejected)

        // A remembered token meets the store's changes: its issuer removed, it is refused.
        try temporary.store.removeIssuer("https://idp.example", actor: "t")
        _ = try await temporary.store.snapshot()
        #expect(authenticator.authenticateImmediately(credentials(password: second)) == nil)
        #expect(await authenticator.authenticate(credentials(password: second)) == .rejected)
    }

    @Test("an HS256 issuer is accepted only with its configured secret")
    func sharedSecret() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let secret = String(repeating: "s3cr3t-", count: 6)
        try temporary.store.addIssuer(
            TrustedIssuer(issuer: "legacy", audience: "mqtt", hmacSecret: secret, rolesClaim: "scope"), actor: "t")
        let authenticator = JWTAuthenticator(store: temporary.store, logger: temporary.logger)
        for (key, accepted) in [(secret, true), (secret + "x", false)] {
            let signer = JWTKeyCollection()
            await signer.add(hmac: HMACKey(from: key), digestAlgorithm: .sha256)
            let token = try await signer.sign(
                ExternalClaims(iss: "legacy", aud: "mqtt", sub: "old-app", tenant: "acme", scope: "app", exp: now + 60))
            #expect((await authenticator.authenticate(credentials(password: token)).principal != nil) == accepted)
        }
        await #expect(throws: IAMError.self) {
            try await TrustedIssuer(issuer: "weak", audience: "mqtt", hmacSecret: "short").validateKeys()
        }
    }

    @Test("Gatehouse's own tokens: accepted, checked against the identity, valid across one key rotation")
    func ownTokens() async throws {
        let (temporary, issuer, authenticator) = try ownIssuer()
        let store = temporary.store
        let first = try await issuer.issue(for: "alice", lifetime: 600, roles: ["viewer"], actor: "t")
        let principal = try #require(await authenticator.authenticate(credentials(password: first)).principal)
        #expect(principal.username == "alice" && principal.roles == ["viewer"] && principal.tenant == "acme")
        #expect(await store.isStillValid(principal))

        _ = try JWTIssuer.rotateKey(in: store, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: first)).principal != nil)  // previous key kept
        let second = try await issuer.issue(for: "alice", lifetime: 600, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: second)).principal != nil)
        _ = try JWTIssuer.rotateKey(in: store, actor: "t")
        #expect(await authenticator.authenticate(credentials(password: first)) == .rejected)  // two keys back

        try store.revokeRole("viewer", from: "alice", actor: "t")
        #expect(await authenticator.authenticate(credentials(password: second)) == .rejected)
        #expect(await !store.isStillValid(principal))
    }
}

@Suite("certificate authenticator")
struct CertificateAuthenticatorTests {
    @Test("bound by fingerprint, or by common name under a CA; unbound certificates skip to the next method")
    func bindings() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        let authority = try CertificateAuthority.create(commonName: "Fleet CA")
        let caFingerprint = try ClientCertificate.fingerprint(pem: try authority.certificatePEM)
        func presented(_ name: String) throws -> ClientCertificate {
            let issued = try authority.issue(commonName: name, usage: .client)
            var certificate = try ClientCertificate(pemEncoded: issued.certificatePEM)
            certificate.issuerFingerprintSHA256 = caFingerprint
            return certificate
        }
        let authenticator = CertificateAuthenticator(store: store, logger: temporary.logger)
        let exact = try presented("sensor-1")
        let exactBinding = try store.bindCertificate(.fingerprint(exact.fingerprintSHA256), to: "sensor-1", actor: "t")
        var attempt = credentials()
        attempt.clientCertificate = exact
        #expect(authenticator.authenticateImmediately(attempt) == nil)  // no snapshot loaded yet
        #expect(await authenticator.authenticate(attempt).principal?.username == "sensor-1")
        _ = try await store.snapshot()
        #expect(authenticator.authenticateImmediately(attempt)?.principal?.username == "sensor-1")
        attempt.username = "alice"  // another identity's name with sensor-1's certificate
        #expect(authenticator.authenticateImmediately(attempt) == nil)
        #expect(await authenticator.authenticate(attempt) == .rejected)
        attempt.username = nil

        attempt.clientCertificate = try presented("sensor-1")  // same name, other certificate: not bound
        #expect(await authenticator.authenticate(attempt) == .skipped)
        try store.bindCertificate(.commonName("sensor-1", issuerFingerprint: caFingerprint), to: "sensor-1", actor: "t")
        #expect(await authenticator.authenticate(attempt).principal?.username == "sensor-1")
        attempt.clientCertificate?.issuerFingerprintSHA256 = String(repeating: "0", count: 64)  // another CA
        #expect(await authenticator.authenticate(attempt) == .skipped)

        try store.revokeCredential(exactBinding, actor: "t")
        attempt.clientCertificate = exact
        attempt.clientCertificate?.issuerFingerprintSHA256 = nil
        _ = try await store.snapshot()
        #expect(authenticator.authenticateImmediately(attempt) == nil)
        #expect(await authenticator.authenticate(attempt) == .skipped)
        #expect(await authenticator.authenticate(credentials()) == .skipped)
    }
}

@Suite("JWT parts")
struct JWTPartsTests {
    @Test("base64url decodes every alphabet character and refuses others")
    func base64URL() throws {
        let samples: [[UInt8]] = [[], [0], [0xFF, 0xFE], Array("{\"a\":1}".utf8), Array(0...255)]
        for bytes in samples {
            let encoded = Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            #expect(JWTClaims.base64URLDecoded(Substring(encoded).utf8) == bytes)
        }
        #expect(JWTClaims.base64URLDecoded(Substring("ab+c").utf8) == nil)
        #expect(JWTClaims.base64URLDecoded(Substring("ab=").utf8) == nil)
    }
}
