import Hummingbird

/// One thing the broker needs before it can serve (its MQTT listeners bound, its identity store
/// readable), asked on every `GET /readyz`.
public struct ReadinessCheck: Sendable {
    public var name: String
    public var isReady: @Sendable () async -> Bool

    public init(name: String, isReady: @escaping @Sendable () async -> Bool) {
        self.name = name
        self.isReady = isReady
    }
}

/// `GET /healthz`: the process answers. `GET /readyz`: every readiness check passes, else a
/// 503 whose JSON body names the failing ones (as Kubernetes probes and load balancers read them).
struct HealthRoutes: Sendable {
    let checks: [ReadinessCheck]

    static let paths: [(method: String, path: String)] = [("get", "/healthz"), ("get", "/readyz")]

    func add(to router: Router<GatehouseRequestContext>) {
        router.get("/healthz") { _, _ in JSONResponse.object(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            let (ready, body) = await Self.readiness(checks)
            return JSONResponse.object(body, status: ready ? .ok : .serviceUnavailable)
        }
    }

    /// Runs every check; the body lists each one's state and the failing ones by name.
    static func readiness(_ checks: [ReadinessCheck]) async -> (ready: Bool, body: [String: Any]) {
        var states: [String: String] = [:]
        var failing: [String] = []
        for check in checks {
            let ready = await check.isReady()
            states[check.name] = ready ? "ok" : "failing"
            if !ready { failing.append(check.name) }
        }
        guard failing.isEmpty else { return (false, ["status": "not ready", "failing": failing, "checks": states]) }
        return (true, ["status": "ready", "checks": states])
    }
}
