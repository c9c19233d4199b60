import Foundation
import GRDB

extension IdentityStore {
    /// Sets (replacing any previous) the identity's password; the old one stops working and
    /// the sessions it opened end.
    public func setPassword(
        _ password: String, for name: String, hasher: PasswordHasher = PasswordHasher(), actor: String
    )
        throws
    {
        guard password.utf8.count >= 8 else { throw IAMError("a password needs at least 8 characters") }
        let (hash, kdf) = try hasher.hash(password)
        let scram = try SCRAMVerifier.make(password: password)
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql:
                    "UPDATE credential SET revoked_at = ? WHERE identity_id = ? AND kind = 'password' AND revoked_at IS NULL",
                arguments: [now(), identity.id])
            try db.execute(
                sql: """
                    INSERT INTO credential (id, identity_id, kind, secret_hash, kdf, scram, created_at)
                    VALUES (?, ?, 'password', ?, ?, ?, ?)
                    """,
                arguments: [randomID("pwd"), identity.id, Data(hash), kdf, scram.text, now()])
            try Self.audit(db, actor: actor, action: "password.set", subject: name, identityID: identity.id)
        }
    }

    /// Creates an opaque token. The token itself is returned once and never stored.
    public func createToken(
        for name: String, expiresAt: Int64? = nil, roles: [String]? = nil, description: String? = nil, actor: String
    ) throws -> (credential: CredentialSummary, token: String) {
        let token = APIToken.generate()
        let id = randomID("tok")
        try write { db in
            let identity = try Self.identity(db, named: name)
            if let roles {
                let missing = Set(roles).subtracting(identity.roles)
                guard missing.isEmpty else {
                    throw IAMError(
                        "'\(name)' does not have the role(s) \(missing.sorted().joined(separator: ", ")) to give a token"
                    )
                }
            }
            try db.execute(
                sql: """
                    INSERT INTO credential (id, identity_id, kind, secret_hash, hint, roles, expires_at, created_at, description)
                    VALUES (?, ?, 'token', ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    id, identity.id, Data(APIToken.digest(token.utf8)), String(token.prefix(10)),
                    roles?.sorted().joined(separator: ","), expiresAt, now(), description,
                ])
            try Self.audit(
                db, actor: actor, action: "token.create", subject: name, identityID: identity.id,
                detail: "id=\(id)\(expiresAt.map { " expires=\($0)" } ?? "")")
        }
        let summary = try credentials(identity: name, kind: .token).first { $0.id == id }
        guard let summary else { throw IAMError("the new token vanished") }
        return (summary, token)
    }

    /// How a certificate is tied to an identity.
    public enum CertificateBinding: Sendable, Equatable {
        /// Exactly this certificate, by the SHA-256 of its DER.
        case fingerprint(String)
        /// Any certificate with this subject common name issued by the CA with this fingerprint.
        case commonName(String, issuerFingerprint: String)
        /// Any certificate with this SAN URI issued by the CA with this fingerprint.
        case uri(String, issuerFingerprint: String)

        var column: String {
            switch self {
            case .fingerprint(let hex): "sha256:\(hex.lowercased())"
            case .commonName(let name, _): "cn:\(name)"
            case .uri(let uri, _): "uri:\(uri)"
            }
        }

        var issuerFingerprint: String? {
            switch self {
            case .fingerprint: nil
            case .commonName(_, let issuer), .uri(_, let issuer): issuer.lowercased()
            }
        }
    }

    @discardableResult
    public func bindCertificate(
        _ binding: CertificateBinding, to name: String, description: String? = nil, actor: String
    )
        throws -> String
    {
        let id = randomID("crt")
        try write { db in
            let identity = try Self.identity(db, named: name)
            let taken = try String.fetchOne(
                db,
                sql: """
                    SELECT identity.name FROM credential JOIN identity ON identity.id = credential.identity_id
                    WHERE credential.kind = 'certificate' AND credential.binding = ? AND credential.revoked_at IS NULL
                    AND COALESCE(credential.ca_fingerprint, '') = COALESCE(?, '')
                    """,
                arguments: [binding.column, binding.issuerFingerprint])
            if let taken { throw IAMError("that certificate is already bound to '\(taken)'") }
            try db.execute(
                sql: """
                    INSERT INTO credential (id, identity_id, kind, binding, ca_fingerprint, created_at, description)
                    VALUES (?, ?, 'certificate', ?, ?, ?, ?)
                    """,
                arguments: [id, identity.id, binding.column, binding.issuerFingerprint, now(), description])
            try Self.audit(
                db, actor: actor, action: "certificate.bind", subject: name, identityID: identity.id,
                detail: "id=\(id) \(binding.column)")
        }
        return id
    }

    // MARK: Trusted JWT issuers

    public func addIssuer(_ issuer: TrustedIssuer, actor: String) throws {
        guard issuer.jwks != nil || issuer.hmacSecret != nil else {
            throw IAMError("a trusted issuer needs a JWKS or an HS256 secret")
        }
        try write(conflict: "issuer '\(issuer.issuer)' is already trusted") { db in
            try db.execute(
                sql: """
                    INSERT INTO trusted_issuer (issuer, audience, jwks, hmac_secret, subject_claim, tenant_claim,
                        roles_claim, default_tenant, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    issuer.issuer, issuer.audience, issuer.jwks, issuer.hmacSecret, issuer.subjectClaim,
                    issuer.tenantClaim, issuer.rolesClaim, issuer.defaultTenant, now(),
                ])
            try Self.audit(
                db, actor: actor, action: "issuer.add", subject: issuer.issuer,
                detail: "audience=\(issuer.audience) keys=\(issuer.jwks != nil ? "jwks" : "hs256")")
        }
    }

    public func removeIssuer(_ issuer: String, actor: String) throws {
        try write { db in
            try db.execute(sql: "DELETE FROM trusted_issuer WHERE issuer = ?", arguments: [issuer])
            guard db.changesCount == 1 else { throw IAMError("no trusted issuer '\(issuer)'") }
            try Self.audit(db, actor: actor, action: "issuer.remove", subject: issuer, identityID: "*")
        }
    }

    public func issuers() throws -> [TrustedIssuer] {
        try read { db in try Self.trustedIssuers(db) }
    }

    static func trustedIssuers(_ db: Database) throws -> [TrustedIssuer] {
        try Row.fetchAll(db, sql: "SELECT * FROM trusted_issuer ORDER BY issuer").map { row in
            TrustedIssuer(
                issuer: row["issuer"], audience: row["audience"], jwks: row["jwks"], hmacSecret: row["hmac_secret"],
                subjectClaim: row["subject_claim"], tenantClaim: row["tenant_claim"], rolesClaim: row["roles_claim"],
                defaultTenant: row["default_tenant"])
        }
    }
}
