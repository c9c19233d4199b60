import Foundation
import GatehouseAuth
import GatehouseBroker
import GatehouseCertificates
import GatehouseConfig
import GatehouseIAM
import Logging
import MQTTCore
import Metrics
import ServiceLifecycle

/// Opens the identity store and, on first start (no tenant yet), creates tenant `default`,
/// identity `admin` with role `admin`, and one admin token written to `DATA_DIR/admin.token`
/// (mode 0600), so that a fresh broker is secure and usable at once.
func openIdentityStore(_ settings: ServerConfiguration, logger: Logger) throws -> IdentityStore {
    let path = settings.iamDatabase ?? IdentityStore.defaultPath(dataDirectory: settings.dataDirectory)
    let store = try IdentityStore(path: path)
    guard try store.tenants().isEmpty else { return store }
    let actor = "gatehouse:first-start"
    try store.addTenant("default", actor: actor)
    try store.addIdentity("admin", tenant: "default", kind: .user, roles: ["admin"], actor: actor)
    let created = try store.createToken(for: "admin", description: "made on first start", actor: actor)
    let tokenFile = (settings.dataDirectory as NSString).appendingPathComponent("admin.token")
    try writeSecret(created.token + "\n", to: tokenFile)
    logger.notice(
        "first start: created tenant 'default' and identity 'admin'; its token is in \(tokenFile)",
        metadata: ["store": "\(path)"])
    return store
}

/// The configured methods in order, anonymous last when allowed, behind the failure back-off.
func makeAuthenticator(_ settings: ServerConfiguration, store: IdentityStore, logger: Logger) -> any Authenticator {
    var chain: [any Authenticator] = settings.authentication.methods.map { method in
        let authenticator: any Authenticator =
            switch method {
            case "certificate": CertificateAuthenticator(store: store, logger: logger)
            case "token": TokenAuthenticator(store: store, logger: logger)
            case "jwt": JWTAuthenticator(store: store, logger: logger)
            default: PasswordAuthenticator(store: store, logger: logger)
            }
        return CountedAuthenticator(method: method, authenticator)
    }
    if settings.allowAnonymous { chain.append(CountedAuthenticator(method: "anonymous", AnonymousAuthenticator())) }
    let base = settings.authentication.backoffBaseMilliseconds
    guard base > 0 else { return AuthenticatorChain(chain) }
    return ThrottledAuthenticator(
        AuthenticatorChain(chain),
        backoff: .init(
            base: .milliseconds(base),
            maximum: .milliseconds(max(base, settings.authentication.backoffMaximumMilliseconds))))
}

/// The MQTT 5 enhanced methods the configuration enables: SCRAM against the stored verifiers,
/// and GH-TOKEN / GH-JWT, whose AUTH data is a token or JWT checked as the password would be.
func makeEnhancedAuthenticator(
    _ settings: ServerConfiguration, store: IdentityStore, backOff authenticator: any Authenticator, logger: Logger
) -> any EnhancedAuthenticator {
    let methods = EnhancedAuthenticators(
        settings.authentication.enhancedMethods.map { method -> any EnhancedAuthenticator in
            let member: any EnhancedAuthenticator =
                switch method {
                case "GH-TOKEN":
                    PasswordLikeMethod(method: method, authenticator: TokenAuthenticator(store: store, logger: logger))
                case "GH-JWT":
                    PasswordLikeMethod(method: method, authenticator: JWTAuthenticator(store: store, logger: logger))
                default: SCRAMAuthenticator(store: store, logger: logger)
                }
            return CountedEnhancedAuthenticator(member)
        })
    guard let throttle = authenticator as? ThrottledAuthenticator else { return methods }
    return ThrottledEnhancedAuthenticator(methods, sharing: throttle)
}

/// Follows the identity store's audit sequence and ends the sessions whose identity, role,
/// tenant or credential changed so that they may no longer connect (DISCONNECT 0x98 in 5.0).
struct RevocationEnforcer: Service {
    let store: IdentityStore
    let broker: Broker
    let logger: Logger
    var interval: Duration = .milliseconds(250)

    func run() async throws {
        var seen = (try? store.latestChange()) ?? 0
        // Polled rather than pushed: the CLI writes from another process. Ends quietly at
        // shutdown (the sleep is cancelled).
        while !Task.isShuttingDownGracefully {
            do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) } } catch { return }
            // The authenticators' in-memory view is refreshed first, so that no CONNECT after
            // this point is judged on the old state; then the sessions.
            guard let changed = try? await store.changesToEnforce(after: seen), changed.latest != seen else {
                continue
            }
            seen = changed.latest
            await enforce(changed.identityIDs)
        }
    }

    private func enforce(_ identities: Set<String>) async {
        let sessions = BrokerSessionControl(store: store, broker: broker, logger: logger)
        await sessions.endInvalidSessions { identities.contains("*") || identities.contains($0) }
    }
}

/// Ends the broker sessions whose credential the store no longer accepts: for the HTTP side,
/// which revokes tokens without knowing the broker, and for the enforcer's poll.
struct BrokerSessionControl: SessionControl {
    /// Sessions ended because their identity or credential was revoked, disabled or changed.
    static let revocationsEnforced = Counter(label: "gatehouse_revocations_enforced_total")
    let store: IdentityStore
    let broker: Broker
    let logger: Logger

    func endInvalidSessions(identityID: String) async -> Int {
        // The authenticators' view first, so that the revoked credential cannot connect again.
        _ = try? await store.refreshIfChanged()
        return await endInvalidSessions { $0 == identityID }
    }

    @discardableResult
    func endInvalidSessions(of identities: (String) -> Bool) async -> Int {
        var ended = 0
        for (clientID, principal) in broker.connectedPrincipals() where identities(principal.identityID) {
            guard await !store.isStillValid(principal) else { continue }
            if broker.disconnect(clientID: clientID, ifStill: principal, reason: .administrativeAction) {
                ended += 1
                Self.revocationsEnforced.increment()
                logger.notice(
                    "session ended: its identity or credential changed",
                    metadata: ["client_id": "\(clientID)", "identity": "\(principal.username)"])
            }
        }
        return ended
    }
}
