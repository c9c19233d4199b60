import GatehouseAuth
import Testing

private struct Fixed: Authenticator {
    let outcome: AuthenticationOutcome
    func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome { outcome }
}

@Suite("authenticator chain")
struct AuthenticatorChainTests {
    let credentials = ConnectCredentials(clientIdentifier: "c1", username: "u")
    let alice = Principal(identityID: "1", username: "alice", clientIdentifier: "c1", tenant: "acme", roles: ["device"])

    @Test("the first authenticator that does not skip decides")
    func order() async {
        let accepts = Fixed(outcome: .accepted(alice))
        #expect(
            await AuthenticatorChain([Fixed(outcome: .skipped), accepts]).authenticate(credentials) == .accepted(alice))
        #expect(await AuthenticatorChain([Fixed(outcome: .rejected), accepts]).authenticate(credentials) == .rejected)
        #expect(
            await AuthenticatorChain([accepts, Fixed(outcome: .rejected)]).authenticate(credentials) == .accepted(alice)
        )
    }

    @Test("a chain where every method skips rejects")
    func denyByDefault() async {
        #expect(await AuthenticatorChain([]).authenticate(credentials) == .rejected)
        #expect(await AuthenticatorChain([Fixed(outcome: .skipped)]).authenticate(credentials) == .rejected)
    }

    @Test("anonymous access names the default tenant and grants only the role anonymous")
    func anonymous() async {
        guard case .accepted(let principal) = await AnonymousAuthenticator().authenticate(credentials) else {
            Issue.record("anonymous did not accept")
            return
        }
        #expect(principal.tenant == "default" && principal.roles == ["anonymous"] && principal.clientIdentifier == "c1")
    }

    @Test("allow-all accepts every action")
    func allowAll() {
        for action in Action.allCases {
            #expect(AllowAllAuthorizer().authorize(alice, action, topic: "a/b") == .accept)
        }
    }
}

/// A two-message exchange that accepts when the answer is "right".
private struct TwoSteps: EnhancedAuthenticator {
    let principal: Principal
    var methods: Set<String> { ["TEST"] }
    func start(method: String, data: [UInt8], credentials: ConnectCredentials) async -> EnhancedAuthenticationStep {
        .challenge(data: [1], next: Answer(principal: principal))
    }
    struct Answer: EnhancedAuthenticationContinuation {
        let principal: Principal
        func respond(_ data: [UInt8]) async -> EnhancedAuthenticationStep {
            data == Array("right".utf8) ? .accepted(principal, data: nil) : .rejected
        }
    }
}

@Suite("enhanced authentication back-off")
struct ThrottledEnhancedTests {
    @Test("a failed exchange slows its address down like a failed password; a success clears it")
    func backoff() async {
        let throttle = ThrottledAuthenticator(
            AuthenticatorChain([]), backoff: .init(base: .milliseconds(1), maximum: .milliseconds(2)))
        let principal = Principal(identityID: "1", username: "a", clientIdentifier: "c", tenant: "t", roles: [])
        let enhanced = ThrottledEnhancedAuthenticator(TwoSteps(principal: principal), sharing: throttle)
        let credentials = ConnectCredentials(clientIdentifier: "c", remoteAddress: "10.0.0.9")
        func exchange(_ answer: String) async -> Bool {
            guard
                case .challenge(_, let next) = await enhanced.start(method: "TEST", data: [], credentials: credentials)
            else { return false }
            if case .accepted = await next.respond(Array(answer.utf8)) { return true }
            return false
        }
        #expect(throttle.delay(for: credentials) == .zero)
        #expect(await !exchange("wrong"))
        #expect(throttle.delay(for: credentials) == .milliseconds(1))
        #expect(await !exchange("wrong"))
        #expect(throttle.delay(for: credentials) == .milliseconds(2))
        #expect(await exchange("right"))
        #expect(throttle.delay(for: credentials) == .zero)
    }
}
