/// The answer of one authenticator.
public enum AuthenticationOutcome: Sendable, Hashable {
    case accepted(Principal)
    /// Stop: the credentials are wrong for this method, and no later method may accept them.
    case rejected
    /// Not this method's kind of credential: hand on to the next authenticator.
    case skipped
}

/// One authentication method (password, token, JWT, certificate, anonymous). Implementations
/// must not block an event loop: slow work goes to a thread pool.
public protocol Authenticator: Sendable {
    func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome
}

/// Authenticators tried in the configured order. The first that accepts or rejects decides;
/// if every one skips, the connection is rejected (deny by default).
public struct AuthenticatorChain: Authenticator {
    public let authenticators: [any Authenticator]

    public init(_ authenticators: [any Authenticator]) { self.authenticators = authenticators }

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        for authenticator in authenticators {
            switch await authenticator.authenticate(credentials) {
            case .skipped: continue
            case let outcome: return outcome
            }
        }
        return .rejected
    }
}

/// Accepts every connection as the tenant `default` with no roles. Only for deployments that
/// turn anonymous access on explicitly.
public struct AnonymousAuthenticator: Authenticator {
    public init() {}

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        .accepted(
            Principal(
                identityID: "anonymous",
                username: credentials.username ?? "anonymous",
                clientIdentifier: credentials.clientIdentifier,
                tenant: "default",
                roles: []
            )
        )
    }
}
