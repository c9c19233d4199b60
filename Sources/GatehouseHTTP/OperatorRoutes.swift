public import GatehouseIAM
import Hummingbird
import NIOCore

/// What the operator's endpoints serve, rendered by the executable at each request: the
/// Prometheus text for `GET /metrics`, the JSON behind the status page, and who may read them.
public struct OperatorEndpoints: Sendable {
    public var metrics: @Sendable () async -> [UInt8]
    /// A JSON object: counts, rates' counters, listeners, the ACL's state, the last audit entries.
    public var status: @Sendable () async -> [UInt8]
    /// Loopback clients read without a token unless this is set; others always need an admin token.
    public var tokenRequiredFromLoopback: Bool

    public init(
        tokenRequiredFromLoopback: Bool = false, metrics: @escaping @Sendable () async -> [UInt8],
        status: @escaping @Sendable () async -> [UInt8]
    ) {
        self.metrics = metrics
        self.status = status
        self.tokenRequiredFromLoopback = tokenRequiredFromLoopback
    }
}

/// `GET /metrics` in the Prometheus text format (0.0.4), and the status page at `/` with the
/// JSON it polls at `/api/status`.
struct OperatorRoutes: Sendable {
    let endpoints: OperatorEndpoints
    let store: IdentityStore

    static let paths: [(method: String, path: String)] = [("get", "/metrics"), ("get", "/"), ("get", "/api/status")]

    func add(to router: Router<GatehouseRequestContext>) {
        serve("/metrics", contentType: "text/plain; version=0.0.4; charset=utf-8", router) { await endpoints.metrics() }
        serve("/api/status", contentType: "application/json", router) { await endpoints.status() }
        serve("/", contentType: "text/html; charset=utf-8", router) { StatusPage.html }
    }

    private func serve(
        _ path: RouterPath, contentType: String, _ router: Router<GatehouseRequestContext>,
        _ body: @escaping @Sendable () async -> [UInt8]
    ) {
        router.get(path) { request, context in
            if endpoints.tokenRequiredFromLoopback || !Self.isLoopback(context.remoteAddress) {
                if case .failure(let refusal) = await AdminRoutes.admin(of: request, store: store) {
                    return refusal.response
                }
            }
            var response = Response(
                status: .ok, headers: [.contentType: contentType],
                body: .init(byteBuffer: ByteBuffer(bytes: await body())))
            response.headers[.cacheControl] = "no-store"
            return response
        }
    }

    static func isLoopback(_ address: String?) -> Bool {
        guard let address else { return false }
        return address.hasPrefix("127.") || address == "::1" || address.hasPrefix("::ffff:127.")
    }
}
