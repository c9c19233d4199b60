/// What the identity store holds, as the CLI and the authenticators see it.
public enum IdentityKind: String, Sendable, CaseIterable, Codable {
    case device, user, service, application
}

public struct Tenant: Sendable, Equatable {
    public var name: String
    public var enabled: Bool
    public var createdAt: Int64
}

public struct Identity: Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    public var kind: IdentityKind
    public var enabled: Bool
    /// Client identifiers this identity may use: `nil` allows any; otherwise a pattern where
    /// `%u` is the identity's name and a trailing `*` matches any suffix (e.g. `%u-*`).
    public var clientIDPattern: String?
    public var createdAt: Int64
    /// Roles granted directly.
    public var roles: [String]
}

public struct Group: Sendable, Equatable {
    public var name: String
    public var tenant: String
    public var roles: [String]
    public var members: [String]
}

public enum CredentialKind: String, Sendable, Codable {
    case password, token, certificate
}

/// A credential's public side: never the secret, never its hash.
public struct CredentialSummary: Sendable, Equatable {
    public var id: String
    public var identity: String
    public var kind: CredentialKind
    /// For tokens: the first characters, to recognise one in a list.
    public var hint: String?
    /// For tokens: the roles it is limited to (nil: all of the identity's).
    public var roles: [String]?
    /// For certificates: what it is bound by (`sha256:…`, `cn:…`, `uri:…`).
    public var binding: String?
    public var expiresAt: Int64?
    public var revokedAt: Int64?
    public var createdAt: Int64
    public var description: String?
}

/// An external issuer whose JWTs the `jwt` authenticator accepts.
public struct TrustedIssuer: Sendable, Equatable {
    public var issuer: String
    public var audience: String
    /// A JWKS document (`{"keys": [...]}`) with RSA, EC or Ed25519 public keys.
    public var jwks: String?
    /// A shared HS256 secret; only when configured explicitly.
    public var hmacSecret: String?
    /// Claims that carry the subject (an identity's name), the tenant and the roles.
    public var subjectClaim: String
    public var tenantClaim: String
    public var rolesClaim: String
    /// The tenant for issuers whose tokens carry none.
    public var defaultTenant: String?

    public init(
        issuer: String,
        audience: String,
        jwks: String? = nil,
        hmacSecret: String? = nil,
        subjectClaim: String = "sub",
        tenantClaim: String = "tenant",
        rolesClaim: String = "roles",
        defaultTenant: String? = nil
    ) {
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.hmacSecret = hmacSecret
        self.subjectClaim = subjectClaim
        self.tenantClaim = tenantClaim
        self.rolesClaim = rolesClaim
        self.defaultTenant = defaultTenant
    }
}

public struct AuditEntry: Sendable, Equatable {
    public var sequence: Int64
    public var at: Int64
    public var actor: String
    public var action: String
    public var subject: String
    public var detail: String?
}

/// A refusal from the store, in one sentence the CLI prints as it is.
public struct IAMError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of refusal, so that the HTTP side answers 404 or 409 where it fits.
    public enum Kind: Sendable, Equatable {
        case invalid, notFound, conflict
    }

    public let description: String
    public let kind: Kind

    public init(_ description: String, kind: Kind = .invalid) {
        self.description = description
        self.kind = kind
    }
}
