/// Who a connection is, once authenticated: what the ACL decides on and what the broker
/// records against the session.
public struct Principal: Sendable, Hashable, Codable {
    public var identityID: String
    public var username: String
    public var clientIdentifier: String
    public var tenant: String
    public var roles: [String]
    /// The credential that authenticated the connection, so that revoking it can end the
    /// sessions that used it. Nil for anonymous access.
    public var credentialID: String?
    /// Seconds since 1970 at which the credential stops being valid; nil if it never expires.
    public var expiresAt: Int64?

    public init(
        identityID: String,
        username: String,
        clientIdentifier: String,
        tenant: String,
        roles: [String],
        credentialID: String? = nil,
        expiresAt: Int64? = nil
    ) {
        self.identityID = identityID
        self.username = username
        self.clientIdentifier = clientIdentifier
        self.tenant = tenant
        self.roles = roles
        self.credentialID = credentialID
        self.expiresAt = expiresAt
    }
}

/// What a CONNECT presents, with what the transport verified before it.
public struct ConnectCredentials: Sendable {
    public var clientIdentifier: String
    public var username: String?
    public var password: [UInt8]?
    /// The remote end's IP address, for back-off and logs.
    public var remoteAddress: String?
    /// The client certificate a TLS listener verified; nil on plain listeners or when none was sent.
    public var clientCertificate: ClientCertificate?

    public init(
        clientIdentifier: String,
        username: String? = nil,
        password: [UInt8]? = nil,
        remoteAddress: String? = nil,
        clientCertificate: ClientCertificate? = nil
    ) {
        self.clientIdentifier = clientIdentifier
        self.username = username
        self.password = password
        self.remoteAddress = remoteAddress
        self.clientCertificate = clientCertificate
    }
}
