import Foundation
import GRDB
import JWTKit

/// RFC 7523 checks of a JWT assertion (a JWT-bearer grant, or `private_key_jwt` client
/// authentication), in a fixed order that stops at the first failure: `iss` and `sub`, the key
/// by `kid`, the signature, `aud`, `exp`, `nbf`, `iat`, the lifetime, `jti` not seen before.
struct AssertionVerifier: Sendable {
    let store: IdentityStore
    let keys: PublicKeyCache
    /// The longest `exp − iat` accepted.
    let maximumLifetime: Int64
    /// Seconds of clock difference allowed for `exp`, `nbf` and `iat`.
    let leeway: Int64 = 30

    /// A verified assertion's parties.
    struct Verified: Sendable {
        var issuer: String
        var subject: String
        var expiresAt: Int64
        var pending: PendingAssertion
    }

    /// Checks what `assertion` says against the keys of whoever `parties` names as its issuer.
    func verify(_ assertion: ParsedAssertion, keySource: PublicKeySource, audience: String) async -> Result<
        Verified, AssertionRefusal
    > {
        let (parsed, parties) = (assertion.jwt, assertion)
        let key: JWTAlgorithmValue
        switch await keys.key(for: keySource, keyID: parsed.keyID, algorithm: parsed.algorithm) {
        case .failure(let refusal): return .failure(refusal)
        case .success(let found): key = JWTAlgorithmValue(found)
        }
        guard key.verifies(parsed) else { return .failure(.init("the signature does not verify")) }
        let claims = parsed.claims
        guard claims.strings("aud").contains(audience) else {
            return .failure(.init("'aud' must contain the token endpoint \(audience)"))
        }
        let moment = now()
        guard let expiry = claims.number("exp").map({ Int64($0) }) else {
            return .failure(.init("the assertion has no 'exp'"))
        }
        guard expiry + leeway > moment else { return .failure(.init("the assertion has expired")) }
        if let notBefore = claims.number("nbf").map({ Int64($0) }), notBefore > moment + leeway {
            return .failure(.init("the assertion is not valid yet ('nbf')"))
        }
        guard let issuedAt = claims.number("iat").map({ Int64($0) }) else {
            return .failure(.init("the assertion has no 'iat'"))
        }
        guard issuedAt <= moment + leeway else { return .failure(.init("'iat' is in the future")) }
        guard expiry - issuedAt <= maximumLifetime else {
            return .failure(.init("the assertion lives longer than \(maximumLifetime) s ('exp' − 'iat')"))
        }
        guard let tokenID = claims.string("jti"), !tokenID.isEmpty else {
            return .failure(.init("the assertion has no 'jti'"))
        }
        // The jti is recorded in the transaction that issues the token (`recordIssuance`).
        return .success(
            Verified(
                issuer: parties.issuer, subject: parties.subject, expiresAt: expiry,
                pending: PendingAssertion(issuer: parties.issuer, tokenID: tokenID, expiresAt: expiry + leeway)))
    }
}

/// An assertion read once: its parts and the unverified `iss` and `sub`, which say whose keys
/// must have signed it.
struct ParsedAssertion {
    let jwt: CompactJWT
    let issuer: String
    let subject: String

    static func parse(_ text: String) -> Result<ParsedAssertion, AssertionRefusal> {
        guard let jwt = CompactJWT(Array(text.utf8)) else { return .failure(.init("not a signed JWT")) }
        guard let issuer = jwt.claims.string("iss"), !issuer.isEmpty else {
            return .failure(.init("the assertion has no 'iss'"))
        }
        guard let subject = jwt.claims.string("sub"), !subject.isEmpty else {
            return .failure(.init("the assertion has no 'sub'"))
        }
        return .success(ParsedAssertion(jwt: jwt, issuer: issuer, subject: subject))
    }
}

/// An assertion's `jti`, recorded when the token it buys is issued: once recorded, the same
/// assertion is refused as a replay.
struct PendingAssertion: Sendable {
    var issuer: String
    var tokenID: String
    var expiresAt: Int64
}

/// A resolved jwt-kit key, checking a compact JWS over exactly the bytes it signs.
struct JWTAlgorithmValue: Sendable {
    let key: any JWTAlgorithm

    init(_ key: any JWTAlgorithm) { self.key = key }

    func verifies(_ parsed: CompactJWT) -> Bool {
        (try? key.verify(parsed.signature, signs: parsed.signingInput)) == true
    }
}

extension IdentityStore {
    /// Records assertion ids until they expire; false when one was recorded already.
    static func recordAssertions(_ db: Database, _ assertions: [PendingAssertion]) throws -> Bool {
        let moment = now()
        // Expired ids can never be replayed (their assertion is refused first): forget them now and then.
        if Int.random(in: 0..<256) == 0 {
            try db.execute(sql: "DELETE FROM seen_assertion WHERE expires_at < ?", arguments: [moment])
        }
        let insert = try db.cachedStatement(
            sql: "INSERT OR IGNORE INTO seen_assertion (issuer, jti, expires_at) VALUES (?, ?, ?)")
        for assertion in assertions {
            try insert.execute(arguments: [assertion.issuer, assertion.tokenID, assertion.expiresAt])
            guard db.changesCount == 1 else { return false }
        }
        return true
    }

    /// Records assertion ids alone (client authentication at revocation or introspection).
    func recordAssertions(_ assertions: [PendingAssertion]) throws -> Bool {
        try write(keepsSnapshot: true) { db in try Self.recordAssertions(db, assertions) }
    }
}
