public import GatehouseIAM
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import Logging
public import NIOCore
public import NIOSSL
public import ServiceLifecycle

/// One HTTP listener: `http://HOST:PORT`, or `https://…` with a TLS configuration.
public struct HTTPListener: Sendable {
    public var host: String
    public var port: Int
    public var tls: TLSConfiguration?

    public init(host: String, port: Int, tls: TLSConfiguration? = nil) {
        self.host = host
        self.port = port
        self.tls = tls
    }

    var scheme: String { tls == nil ? "http" : "https" }
}

/// The HTTP side's settings beyond its listeners.
public struct HTTPSettings: Sendable, Equatable {
    /// The URL clients reach the server by (`https://auth.example.com`); nil takes the request's
    /// own scheme and `Host`. Assertions must name `PUBLIC_URL/oauth/token` in `aud`.
    public var publicURL: String?
    /// Largest request body accepted, in bytes.
    public var maximumBodySize = 64 * 1024
    /// Token endpoint requests per second from one address, and for one client id; 0 is no limit.
    public var tokenRequestsPerAddress = 50.0
    public var tokenRequestsPerClient = 20.0
    /// Seconds a service user's password from the subscriptions endpoint stays valid.
    public var serviceUserTokenLifetime: Int64 = 900
    /// `GET /metrics` asks loopback clients for an admin token too (others always need one).
    public var metricsRequireToken = false

    public init() {}
}

/// The HTTP side as a `Service` on the broker's event loop group: OAuth2 token endpoint,
/// revocation, introspection, JWKS and discovery, and the OpenAPI document.
public struct HTTPServer: Service {
    let listeners: [HTTPListener]
    let oauth: OAuthServer
    let settings: HTTPSettings
    let group: any EventLoopGroup
    let logger: Logger
    /// Shut down when the server stops.
    let jwksClient: JWKSClient?
    let enrollment: EnrollmentService?
    let readiness: [ReadinessCheck]
    let operatorEndpoints: OperatorEndpoints?

    public init(
        listeners: [HTTPListener], oauth: OAuthServer, enrollment: EnrollmentService?, readiness: [ReadinessCheck],
        operatorEndpoints: OperatorEndpoints? = nil, settings: HTTPSettings, group: any EventLoopGroup,
        jwksClient: JWKSClient?, logger: Logger
    ) {
        self.readiness = readiness
        self.operatorEndpoints = operatorEndpoints
        self.jwksClient = jwksClient
        self.enrollment = enrollment
        self.listeners = listeners
        self.oauth = oauth
        self.settings = settings
        self.group = group
        self.logger = logger
    }

    /// The routes of every listener, as the OpenAPI document must list them.
    static let documentedRoutes =
        OAuthRoutes.paths + AdminRoutes.paths + EnrollmentRoutes.paths + HealthRoutes.paths + OperatorRoutes.paths

    public func run() async throws {
        let limiter = TokenRateLimiter(
            perAddress: settings.tokenRequestsPerAddress, perClient: settings.tokenRequestsPerClient)
        var applications: [any Service] = []
        for listener in listeners {
            let router = Router(context: GatehouseRequestContext.self)
            OAuthRoutes(oauth: oauth, settings: settings, limiter: limiter, scheme: listener.scheme, logger: logger)
                .add(to: router)
            AdminRoutes(store: oauth.store, sessions: oauth.sessions, settings: settings, logger: logger).add(
                to: router)
            HealthRoutes(checks: readiness).add(to: router)
            if let operatorEndpoints {
                OperatorRoutes(endpoints: operatorEndpoints, store: oauth.store).add(to: router)
            }
            if let enrollment {
                EnrollmentRoutes(enrollment: enrollment, settings: settings, logger: logger).add(to: router)
            }
            let server: HTTPServerBuilder =
                if let tls = listener.tls { try .tls(.http1(), tlsConfiguration: tls) } else { .http1() }
            let logger = self.logger
            let scheme = listener.scheme
            let application = Application(
                router: router, server: server,
                configuration: .init(address: .hostname(listener.host, port: listener.port), serverName: nil),
                onServerRunning: { channel in
                    let port = channel.localAddress?.port ?? listener.port
                    let host = listener.host.contains(":") ? "[\(listener.host)]" : listener.host
                    logger.info("listening on \(scheme)://\(host):\(port)")
                },
                eventLoopGroupProvider: .shared(group), logger: logger)
            applications.append(application)
        }
        let group = ServiceGroup(
            configuration: .init(services: applications.map { .init(service: $0) }, logger: logger))
        do { try await group.run() } catch {
            await jwksClient?.shutdown()
            throw error
        }
        await jwksClient?.shutdown()
    }
}

/// Hummingbird's context with the remote address, for the per-address rate limit.
struct GatehouseRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: String?
    /// For the TLS peer certificate of enrollment's mTLS routes.
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress?.ipAddress
        channel = source.channel
    }
}
