public import GatehouseIAM
import Hummingbird
import NIOCore

/// What `GET /metrics` serves: the Prometheus text a registry renders at each scrape, and who
/// may read it.
public struct MetricsExposition: Sendable {
    public var render: @Sendable () async -> [UInt8]
    /// Loopback clients read without a token unless this is set; others always need an admin token.
    public var tokenRequiredFromLoopback: Bool

    public init(tokenRequiredFromLoopback: Bool = false, render: @escaping @Sendable () async -> [UInt8]) {
        self.render = render
        self.tokenRequiredFromLoopback = tokenRequiredFromLoopback
    }
}

/// `GET /metrics` in the Prometheus text format (0.0.4).
struct MetricsRoutes: Sendable {
    let exposition: MetricsExposition
    let store: IdentityStore

    static let paths: [(method: String, path: String)] = [("get", "/metrics")]

    func add(to router: Router<GatehouseRequestContext>) {
        router.get("/metrics") { request, context in
            if exposition.tokenRequiredFromLoopback || !Self.isLoopback(context.remoteAddress) {
                if case .failure(let refusal) = await AdminRoutes.admin(of: request, store: store) {
                    return refusal.response
                }
            }
            let text = await exposition.render()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: text)))
        }
    }

    static func isLoopback(_ address: String?) -> Bool {
        guard let address else { return false }
        return address.hasPrefix("127.") || address == "::1" || address.hasPrefix("::ffff:127.")
    }
}
