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

    /// The outcome when it is known at once from memory (a token in the cached snapshot, no
    /// credential of this method's kind), or nil to go the asynchronous way. Called on an
    /// event loop: it must not block. Saves a task and two thread hops per CONNECT.
    func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome?
}

extension Authenticator {
    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? { nil }
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

    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        for authenticator in authenticators {
            switch authenticator.authenticateImmediately(credentials) {
            case .skipped?: continue
            case nil: return nil  // this one needs time: the whole chain goes the asynchronous way
            case let outcome?: return outcome
            }
        }
        return .rejected
    }
}

/// Accepts every connection as the tenant `default` with the role `anonymous`. Only for deployments that
/// turn anonymous access on explicitly.
public struct AnonymousAuthenticator: Authenticator {
    public init() {}

    public func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        anonymous(credentials)
    }

    public func authenticateImmediately(_ credentials: ConnectCredentials) -> AuthenticationOutcome? {
        anonymous(credentials)
    }

    private func anonymous(_ credentials: ConnectCredentials) -> AuthenticationOutcome {
        .accepted(
            Principal(
                identityID: "anonymous",
                username: credentials.username ?? "anonymous",
                clientIdentifier: credentials.clientIdentifier,
                tenant: "default",
                roles: ["anonymous"]
            )
        )
    }
}
