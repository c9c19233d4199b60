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
