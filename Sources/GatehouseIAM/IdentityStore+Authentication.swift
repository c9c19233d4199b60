import Foundation
import GRDB
public import GatehouseAuth

/// What a presented credential matched in the store, before the checks that turn it into a
/// `Principal` (enabled, not expired, allowed client id).
/// How a certificate can be bound: its fingerprint, or a name under the CA that issued it.
struct CertificateBindingKey: Hashable, Sendable {
    var binding: String
    var issuer: String?

    /// The bindings that would match `certificate`, most specific first.
    static func candidates(for certificate: ClientCertificate) -> [CertificateBindingKey] {
        var keys = [CertificateBindingKey(binding: "sha256:\(certificate.fingerprintSHA256)")]
        if let issuer = certificate.issuerFingerprintSHA256 {
            if let name = certificate.commonName { keys.append(.init(binding: "cn:\(name)", issuer: issuer)) }
            keys += certificate.uris.map { .init(binding: "uri:\($0)", issuer: issuer) }
        }
        return keys
    }
}

struct CredentialMatch: Sendable {
    var identity: Identity
    var tenantEnabled: Bool
    var credentialID: String
    var expiresAt: Int64?
    /// A token's role subset; nil for every role the identity has.
    var limitedRoles: [String]?
}

extension IdentityStore {
    private static let matchColumns = """
        SELECT identity.*, tenant.enabled AS tenant_enabled, credential.id AS credential_id,
               credential.expires_at, credential.roles AS limited_roles,
               credential.secret_hash, credential.kdf, credential.scram
        FROM credential
        JOIN identity ON identity.id = credential.identity_id
        JOIN tenant ON tenant.name = identity.tenant
        """

    private static func match(_ db: Database, _ row: Row) throws -> CredentialMatch {
        let limited: String? = row["limited_roles"]
        return CredentialMatch(
            identity: try identity(db, row: row), tenantEnabled: row["tenant_enabled"],
            credentialID: row["credential_id"], expiresAt: row["expires_at"],
            limitedRoles: limited.map { $0.split(separator: ",").map(String.init) })
    }

    func passwordMatch(username: String) async throws -> (match: CredentialMatch, hash: [UInt8], kdf: String)? {
        try await readAsync { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: Self.matchColumns
                        + """
                         WHERE credential.kind = 'password' AND identity.name = ? AND credential.revoked_at IS NULL
                        """,
                    arguments: [username])
            else { return nil }
            let hash: Data = row["secret_hash"]
            return (try Self.match(db, row), Array(hash), row["kdf"])
        }
    }

    /// The SCRAM verifier of `username`'s password, if the password was set since verifiers
    /// are stored.
    func scramMatch(username: String) async throws -> (match: CredentialMatch, verifier: SCRAMVerifier)? {
        try await readAsync { db in
            guard
                let row = try Row.fetchOne(
                    db.cachedStatement(
                        sql: Self.matchColumns
                            + """
                             WHERE credential.kind = 'password' AND identity.name = ?
                            AND credential.revoked_at IS NULL
                            """),
                    arguments: [username]),
                let text: String = row["scram"], let verifier = SCRAMVerifier(text: text)
            else { return nil }
            return (try Self.match(db, row), verifier)
        }
    }

    /// A binding for this certificate: by fingerprint, or by common name or SAN URI under its issuing CA.
    func certificateMatch(_ certificate: ClientCertificate) async throws -> CredentialMatch? {
        let candidates = CertificateBindingKey.candidates(for: certificate)
        return try await readAsync { db in
            for key in candidates {
                let row = try Row.fetchOne(
                    db,
                    sql: Self.matchColumns
                        + """
                         WHERE credential.kind = 'certificate' AND credential.binding = ?
                        AND COALESCE(credential.ca_fingerprint, '') = COALESCE(?, '') AND credential.revoked_at IS NULL
                        """,
                    arguments: [key.binding, key.issuer])
                if let row { return try Self.match(db, row) }
            }
            return nil
        }
    }

    /// The identity named `name` with its tenant's state, for JWTs that Gatehouse issued.
    func identityMatch(named name: String, credentialID: String) async throws -> CredentialMatch? {
        guard var match = try await snapshot().identities[name] else { return nil }
        match.credentialID = credentialID
        return match
    }

    /// Whether a connected principal is still what the store says now: same identity enabled
    /// in an enabled tenant, credential neither revoked nor expired, same roles.
    public func isStillValid(_ principal: Principal) async -> Bool {
        guard let credentialID = principal.credentialID else { return true }  // anonymous
        if let expiresAt = principal.expiresAt, expiresAt <= now() { return false }
        if credentialID.hasPrefix("jwt:") {
            return await jwtPrincipalIsStillValid(principal, credentialID: credentialID)
        }
        let state = try? await readAsync {
            db -> (revoked: Bool, enabled: Bool, limited: String?, clientIDs: String?)? in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT credential.revoked_at, credential.roles AS limited_roles, identity.enabled,
                               identity.client_id_pattern, tenant.enabled AS tenant_enabled
                        FROM credential JOIN identity ON identity.id = credential.identity_id
                        JOIN tenant ON tenant.name = identity.tenant
                        WHERE credential.id = ? AND identity.id = ?
                        """,
                    arguments: [credentialID, principal.identityID])
            else { return nil }
            return (
                row["revoked_at"] as Int64? != nil, row["enabled"] as Bool && row["tenant_enabled"] as Bool,
                row["limited_roles"], row["client_id_pattern"]
            )
        }
        guard let state = state ?? nil, !state.revoked, state.enabled,
            ClientIDPattern.allows(
                state.clientIDs, name: principal.username, clientIdentifier: principal.clientIdentifier),
            let roles = try? await currentRoles(identityID: principal.identityID)
        else { return false }
        let granted =
            state.limited.map { Set(roles).intersection($0.split(separator: ",").map(String.init)) } ?? Set(roles)
        return granted == Set(principal.roles)
    }

    private func jwtPrincipalIsStillValid(_ principal: Principal, credentialID: String) async -> Bool {
        // "jwt:ISSUER", or "jwt:gatehouse#JTI" for a token issued here.
        let named = credentialID.dropFirst("jwt:".count).split(separator: "#", maxSplits: 1)
        let issuer = named.first.map(String.init) ?? ""
        if issuer == JWTIssuer.issuerName {
            if named.count == 2, (try? await snapshot().revokedTokenIDs.contains(String(named[1]))) != false {
                return false
            }
            // Issued here: the identity must still be enabled and still hold every role in the token.
            guard let match = try? await identityMatch(named: principal.username, credentialID: credentialID) else {
                return false
            }
            return match.identity.enabled && match.tenantEnabled
                && Set(principal.roles).isSubset(of: match.identity.roles)
        }
        let trusted = try? await readAsync { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM trusted_issuer WHERE issuer = ?", arguments: [issuer])
        }
        return trusted == true
    }

    private func currentRoles(identityID: String) async throws -> [String] {
        try await readAsync { db in try Self.effectiveRoles(db, identityID: identityID) }
    }
}

extension CredentialMatch {
    /// The principal this credential makes, or nil when the identity, its tenant or the
    /// credential may not connect now, or the client id is not one the identity may use.
    func principal(clientIdentifier: String) -> Principal? {
        guard identity.enabled, tenantEnabled else { return nil }
        if let expiresAt, expiresAt <= now() { return nil }
        guard ClientIDPattern.allows(identity.clientIDPattern, name: identity.name, clientIdentifier: clientIdentifier)
        else { return nil }
        let roles = limitedRoles.map { Set(identity.roles).intersection($0).sorted() } ?? identity.roles
        return Principal(
            identityID: identity.id, username: identity.name, clientIdentifier: clientIdentifier,
            tenant: identity.tenant, roles: roles, credentialID: credentialID, expiresAt: expiresAt)
    }
}

/// Client identifiers an identity may use: `%u` stands for its name; a trailing `*` matches
/// any suffix. `%u` allows exactly the name; `%u-*` allows `sensor-1-a`, not `sensor-2`.
public enum ClientIDPattern {
    public static func allows(_ pattern: String?, name: String, clientIdentifier: String) -> Bool {
        guard let pattern else { return true }
        let expanded = pattern.replacingOccurrences(of: "%u", with: name)
        if expanded.hasSuffix("*") { return clientIdentifier.hasPrefix(expanded.dropLast()) }
        return clientIdentifier == expanded
    }
}
