/// An RFC 6749 §5.2 error: what the token, revocation and introspection endpoints answer.
public struct OAuthError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidRequest = "invalid_request"
        case invalidClient = "invalid_client"
        case invalidGrant = "invalid_grant"
        case unauthorizedClient = "unauthorized_client"
        case unsupportedGrantType = "unsupported_grant_type"
        case invalidScope = "invalid_scope"
        case temporarilyUnavailable = "temporarily_unavailable"
    }

    public var code: Code
    /// A sentence for the client's developer; never a secret.
    public var reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    /// 401 for a failed client authentication (RFC 6749 §5.2), else 400.
    public var status: Int {
        switch code {
        case .invalidClient: 401
        case .temporarilyUnavailable: 503
        default: 400
        }
    }

    public var description: String { "\(code.rawValue): \(reason)" }
}
