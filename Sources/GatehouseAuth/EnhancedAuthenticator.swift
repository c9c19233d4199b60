/// MQTT 5 enhanced authentication [MQTT-4.12]: a method named in CONNECT (or in a
/// re-authenticating AUTH) whose data may take several AUTH round trips.
public protocol EnhancedAuthenticator: Sendable {
    /// The Authentication Method names it answers, e.g. `SCRAM-SHA-256`.
    var methods: Set<String> { get }

    /// The first step, from the Authentication Data of CONNECT or of AUTH 0x19.
    func start(method: String, data: [UInt8], credentials: ConnectCredentials) async -> EnhancedAuthenticationStep
}

/// Where an exchange stands after one message of the client.
public enum EnhancedAuthenticationStep: Sendable {
    /// Send AUTH 0x18 (continue) with `data`; the client's answer goes to `next`.
    case challenge(data: [UInt8], next: any EnhancedAuthenticationContinuation)
    /// Authenticated; `data` (if any) goes to the client in CONNACK or AUTH 0x00.
    case accepted(Principal, data: [UInt8]?)
    /// The same refusal whatever was wrong (0x87).
    case rejected
}

/// The server's half of an exchange waiting for the client's next AUTH.
public protocol EnhancedAuthenticationContinuation: Sendable {
    func respond(_ data: [UInt8]) async -> EnhancedAuthenticationStep
}

/// Enhanced methods tried by name.
public struct EnhancedAuthenticators: EnhancedAuthenticator {
    public let members: [any EnhancedAuthenticator]
    public let methods: Set<String>

    public init(_ members: [any EnhancedAuthenticator]) {
        self.members = members
        methods = members.reduce(into: []) { $0.formUnion($1.methods) }
    }

    public func start(method: String, data: [UInt8], credentials: ConnectCredentials) async
        -> EnhancedAuthenticationStep
    {
        guard let member = members.first(where: { $0.methods.contains(method) }) else { return .rejected }
        return await member.start(method: method, data: data, credentials: credentials)
    }
}

/// A one-message method whose data is a credential an ordinary authenticator checks as a
/// password: `GH-TOKEN` (an API token or OAuth2 access token) and `GH-JWT`, so that a connected
/// client can present a fresh one with AUTH 0x19 before the old one expires.
public struct PasswordLikeMethod: EnhancedAuthenticator {
    public let method: String
    let authenticator: any Authenticator

    public init(method: String, authenticator: any Authenticator) {
        self.method = method
        self.authenticator = authenticator
    }

    public var methods: Set<String> { [method] }

    public func start(method: String, data: [UInt8], credentials: ConnectCredentials) async
        -> EnhancedAuthenticationStep
    {
        var presented = credentials
        presented.password = data
        presented.clientCertificate = nil
        guard case .accepted(let principal) = await authenticator.authenticate(presented) else { return .rejected }
        return .accepted(principal, data: nil)
    }
}
