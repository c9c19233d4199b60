import Foundation
import GatehouseAuth
import GatehouseIAM
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The admin API over the IAM, for an admin token (`Authorization: Bearer gth_…` of an
/// identity with role `admin`): applications and their tenant subscriptions, identities and
/// groups in the style of SCIM 2.0 (RFC 7643/7644), and API tokens. The CLI calls the same
/// IAM functions, and every change is audited with the admin as its actor. Also the one route
/// that bootstrap credentials reach: the application's service users.
struct AdminRoutes: Sendable {
    let store: IdentityStore
    let sessions: (any SessionControl)?
    let settings: HTTPSettings
    let logger: Logger

    /// A route handler given the admin's audit name and the request body's JSON object.
    typealias Handler = @Sendable (Request, GatehouseRequestContext, AdminCall) async -> Response

    struct AdminCall: Sendable {
        var actor: String
        var body: JSONBody
    }

    /// The admin routes, in the OpenAPI document's form, each with its handler: one table, so
    /// that a documented route cannot lack one.
    private static let adminRoutes: [(method: String, path: String, handler: @Sendable (AdminRoutes) -> Handler)] = [
        ("get", "/applications", { routes in { _, _, _ in routes.listApplications() } }),
        ("post", "/applications", { routes in { _, _, call in routes.createApplication(call) } }),
        ("get", "/applications/{name}", { routes in { _, context, _ in routes.showApplication(context) } }),
        (
            "patch", "/applications/{name}",
            { routes in { _, context, call in routes.changeApplication(context, call) } }
        ),
        (
            "post", "/applications/{name}/bootstrap-secret",
            { routes in { _, context, call in routes.rotateBootstrap(context, call) } }
        ),
        (
            "get", "/applications/{name}/subscriptions",
            { routes in { _, context, _ in routes.listSubscriptions(context) } }
        ),
        (
            "post", "/applications/{name}/subscriptions",
            { routes in { _, context, call in routes.subscribe(context, call) } }
        ),
        (
            "delete", "/applications/{name}/subscriptions/{tenant}",
            { routes in { _, context, call in await routes.unsubscribe(context, call) } }
        ),
        ("get", "/scim/v2/Users", { routes in { request, _, _ in SCIM.listUsers(routes.store, request) } }),
        ("post", "/scim/v2/Users", { routes in { _, _, call in SCIM.createUser(routes.store, call) } }),
        ("get", "/scim/v2/Users/{id}", { routes in { _, context, _ in SCIM.showUser(routes.store, context) } }),
        (
            "patch", "/scim/v2/Users/{id}",
            { routes in { _, context, call in SCIM.patchUser(routes.store, context, call) } }
        ),
        ("delete", "/scim/v2/Users/{id}", { routes in { _, context, call in await routes.deleteUser(context, call) } }),
        ("get", "/scim/v2/Groups", { routes in { request, _, _ in SCIM.listGroups(routes.store, request) } }),
        ("post", "/scim/v2/Groups", { routes in { _, _, call in SCIM.createGroup(routes.store, call) } }),
        ("get", "/tokens", { routes in { request, _, _ in routes.listTokens(request) } }),
        ("post", "/tokens", { routes in { _, _, call in routes.createToken(call) } }),
        ("delete", "/tokens/{id}", { routes in { _, context, call in routes.revokeToken(context, call) } }),
        ("get", "/enroll-tokens", { routes in { request, _, _ in routes.listEnrollmentTokens(request) } }),
        ("post", "/enroll-tokens", { routes in { _, _, call in routes.createEnrollmentToken(call) } }),
    ]

    static let bootstrapRoute = (method: "get", path: "/application/currentApplication/subscriptions")

    /// Every route in the OpenAPI document's form: method and path.
    static let paths = [bootstrapRoute] + adminRoutes.map { (method: $0.method, path: $0.path) }

    func add(to router: Router<GatehouseRequestContext>) {
        router.get(RouterPath(Self.bootstrapRoute.path)) { request, _ in await currentSubscriptions(request) }
        for route in Self.adminRoutes {
            let handler = route.handler(self)
            // Hummingbird writes a parameter as `:name`; OpenAPI as `{name}`.
            let path = RouterPath(
                route.path.replacingOccurrences(of: "{", with: ":").replacingOccurrences(of: "}", with: ""))
            router.on(path, method: HTTPRequest.Method(route.method.uppercased()) ?? .get) { request, context in
                await admin(request, context, handler)
            }
        }
    }

    /// The identity behind the request's admin token, or the 401 or 403 to answer with.
    static func admin(of request: Request, store: IdentityStore) async -> Result<Principal, AdminRefusal> {
        guard let bearer = OAuthForm.bearer(request.headers[.authorization]),
            let principal = await store.principal(bearerToken: bearer)
        else {
            var response = Problem(401, "an admin token is required (Authorization: Bearer gth_…)").response
            response.headers[.wwwAuthenticate] = "Bearer realm=\"gatehouse\""
            return .failure(AdminRefusal(response: response))
        }
        guard principal.roles.contains("admin") else {
            return .failure(AdminRefusal(response: Problem(403, "the token's identity is not an admin").response))
        }
        return .success(principal)
    }

    struct AdminRefusal: Error {
        var response: Response
    }

    /// Checks the admin token and reads the body, then runs the route.
    private func admin(_ request: Request, _ context: GatehouseRequestContext, _ handler: Handler) async -> Response {
        let principal: Principal
        switch await Self.admin(of: request, store: store) {
        case .failure(let refusal): return refusal.response
        case .success(let admin): principal = admin
        }
        let body: JSONBody
        switch await JSONBody.read(request, limit: settings.maximumBodySize) {
        case .failure(let problem): return problem.response
        case .success(let read): body = read
        }
        return await handler(request, context, AdminCall(actor: "http:\(principal.username)", body: body))
    }

    // MARK: Bootstrap credentials

    /// `{"users": [{tenant, name, password}]}` for the application whose bootstrap
    /// credentials came by HTTP Basic; each password a fresh JWT (an MQTT password).
    private func currentSubscriptions(_ request: Request) async -> Response {
        guard let authorization = request.headers[.authorization], authorization.lowercased().hasPrefix("basic "),
            let (user, secret) = OAuthForm.basic(authorization),
            let application = try? await store.application(bootstrapUser: user, secret: secret)
        else {
            var response = Problem(401, "bootstrap credentials are required (HTTP Basic)").response
            response.headers[.wwwAuthenticate] = "Basic realm=\"gatehouse\""
            return response
        }
        do {
            let users = try await store.serviceUserCredentials(
                for: application, lifetime: settings.serviceUserTokenLifetime)
            logger.info(
                "service user credentials issued",
                metadata: ["application": "\(application.name)", "tenants": "\(users.count)"])
            return JSONResponse.object(
                ["users": users.map { ["tenant": $0.tenant, "name": $0.name, "password": $0.password] }],
                noStore: true)
        } catch {
            return Problem(503, "the identity store failed").response
        }
    }

    // MARK: Applications

    private func listApplications() -> Response {
        Problem.run { JSONResponse.object(["applications": try store.applications().map(Self.json)]) }
    }

    private func createApplication(_ call: AdminCall) -> Response {
        Problem.run {
            let name = try call.body.string("name")
            let tenant = try call.body.string("tenant")
            let roles = try call.body.strings("requiredRoles")
            let (application, secret) = try store.createApplication(
                name, tenant: tenant, requiredRoles: roles, actor: call.actor)
            var body = Self.json(application)
            body["bootstrap"] = ["username": application.bootstrapUser, "password": secret]
            return JSONResponse.object(body, status: .created, noStore: true)
        }
    }

    private func showApplication(_ context: GatehouseRequestContext) -> Response {
        Problem.run { JSONResponse.object(Self.json(try store.application(named: try context.parameter("name")))) }
    }

    private func changeApplication(_ context: GatehouseRequestContext, _ call: AdminCall) -> Response {
        Problem.run {
            let name = try context.parameter("name")
            if call.body.has("requiredRoles") {
                try store.setRequiredRoles(name, try call.body.strings("requiredRoles"), actor: call.actor)
            }
            if call.body.has("enabled") {
                try store.setApplicationEnabled(name, try call.body.bool("enabled"), actor: call.actor)
            }
            return JSONResponse.object(Self.json(try store.application(named: name)))
        }
    }

    private func rotateBootstrap(_ context: GatehouseRequestContext, _ call: AdminCall) -> Response {
        Problem.run {
            let name = try context.parameter("name")
            let secret = try store.rotateBootstrapSecret(name, actor: call.actor)
            let user = try store.application(named: name).bootstrapUser
            return JSONResponse.object(["username": user, "password": secret], noStore: true)
        }
    }

    private func listSubscriptions(_ context: GatehouseRequestContext) -> Response {
        Problem.run {
            let application = try store.application(named: try context.parameter("name"))
            return JSONResponse.object(["subscriptions": application.subscriptions.map(Self.json)])
        }
    }

    private func subscribe(_ context: GatehouseRequestContext, _ call: AdminCall) -> Response {
        Problem.run {
            let subscription = try store.subscribe(
                try context.parameter("name"), tenant: try call.body.string("tenant"), actor: call.actor)
            return JSONResponse.object(Self.json(subscription), status: .created)
        }
    }

    private func unsubscribe(_ context: GatehouseRequestContext, _ call: AdminCall) async -> Response {
        do {
            let name = try context.parameter("name")
            let tenant = try context.parameter("tenant")
            let serviceUser = try store.application(named: name).subscriptions.first { $0.tenant == tenant }
            let identityID = try serviceUser.map { try store.identity(named: $0.serviceUser).id }
            try store.unsubscribe(name, tenant: tenant, actor: call.actor)
            if let identityID { await sessions?.endInvalidSessions(identityID: identityID) }
            return Response(status: .noContent)
        } catch { return Problem(error).response }
    }

    private func deleteUser(_ context: GatehouseRequestContext, _ call: AdminCall) async -> Response {
        do {
            let identity = try store.identity(id: try context.parameter("id"))
            try store.deleteIdentity(identity.name, actor: call.actor)
            await sessions?.endInvalidSessions(identityID: identity.id)
            return Response(status: .noContent)
        } catch { return Problem(error).response }
    }

    static func json(_ application: GatehouseIAM.Application) -> [String: Any] {
        [
            "name": application.name, "tenant": application.tenant, "requiredRoles": application.requiredRoles,
            "enabled": application.enabled, "bootstrapUser": application.bootstrapUser,
            "subscriptions": application.subscriptions.map(json), "created": iso8601(application.createdAt),
        ]
    }

    static func json(_ subscription: ApplicationSubscription) -> [String: Any] {
        [
            "tenant": subscription.tenant, "serviceUser": subscription.serviceUser,
            "created": iso8601(subscription.createdAt),
        ]
    }

    // MARK: Tokens

    private func listTokens(_ request: Request) -> Response {
        Problem.run {
            let identity = request.query("identity")
            let tokens = try store.credentials(identity: identity, kind: .token).map { token -> [String: Any] in
                var json: [String: Any] = [
                    "id": token.id, "identity": token.identity, "hint": token.hint ?? "",
                    "created": iso8601(token.createdAt),
                    "active": token.revokedAt == nil,
                ]
                if let roles = token.roles { json["roles"] = roles }
                if let expiresAt = token.expiresAt { json["expires"] = iso8601(expiresAt) }
                return json
            }
            return JSONResponse.object(["tokens": tokens])
        }
    }

    private func createToken(_ call: AdminCall) -> Response {
        Problem.run {
            let identity = try call.body.string("identity")
            let lifetime = try call.body.optionalInt("expiresIn")
            let roles = call.body.has("roles") ? try call.body.strings("roles") : nil
            let created = try store.createToken(
                for: identity, expiresAt: lifetime.map { Int64(Date().timeIntervalSince1970) + Int64($0) },
                roles: roles,
                description: try call.body.optionalString("description"), actor: call.actor)
            return JSONResponse.object(
                ["id": created.credential.id, "identity": identity, "token": created.token], status: .created,
                noStore: true)
        }
    }

    // MARK: Enrollment tokens

    private func listEnrollmentTokens(_ request: Request) -> Response {
        Problem.run {
            let tokens = try store.enrollmentTokens(identity: request.query("identity")).map { token -> [String: Any] in
                var json: [String: Any] = [
                    "id": token.id, "identity": token.identity, "expires": iso8601(token.expiresAt),
                    "pinned": token.publicKeySHA256 != nil, "used": token.usedAt != nil,
                ]
                if let usedAt = token.usedAt { json["usedAt"] = iso8601(usedAt) }
                return json
            }
            return JSONResponse.object(["enrollTokens": tokens])
        }
    }

    /// `{"identity", "expiresIn"?, "publicKeySHA256"?}`: a one-time token for POST /enroll, shown once.
    private func createEnrollmentToken(_ call: AdminCall) -> Response {
        Problem.run {
            let identity = try call.body.string("identity")
            let created = try store.createEnrollmentToken(
                for: identity, lifetime: Int64(try call.body.optionalInt("expiresIn") ?? 3_600),
                publicKeySHA256: try call.body.optionalString("publicKeySHA256"), actor: call.actor)
            return JSONResponse.object(
                ["id": created.token.id, "identity": identity, "token": created.secret], status: .created,
                noStore: true)
        }
    }

    private func revokeToken(_ context: GatehouseRequestContext, _ call: AdminCall) -> Response {
        Problem.run {
            let id = try context.parameter("id")
            guard try store.credentials(kind: .token).contains(where: { $0.id == id }) else {
                throw IAMError("no token '\(id)'", kind: .notFound)
            }
            try store.revokeCredential(id, actor: call.actor)
            return Response(status: .noContent)
        }
    }
}

func iso8601(_ seconds: Int64) -> String {
    ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
}

extension Request {
    /// A query parameter, form-decoded ('+' is a space, as browsers and requests send it).
    func query(_ name: String) -> String? {
        guard case .success(let form) = OAuthForm.parse(uri.query ?? "") else { return nil }
        return form[name]
    }
}

extension GatehouseRequestContext {
    func parameter(_ name: String) throws -> String {
        guard let value = parameters.get(name) else { throw IAMError("the path has no \(name)", kind: .notFound) }
        return value.removingPercentEncoding ?? value
    }
}

/// An RFC 9457 problem: what the admin API answers for every refusal.
struct Problem: Error {
    var status: Int
    var detail: String

    init(_ status: Int, _ detail: String) {
        self.status = status
        self.detail = detail
    }

    /// An IAM refusal: 404 and 409 where the IAM says so, else 400.
    init(_ error: any Error) {
        switch error {
        case let problem as Problem: self = problem
        case let refusal as IAMError:
            let status =
                switch refusal.kind {
                case .notFound: 404
                case .conflict: 409
                case .invalid: 400
                }
            self.init(status, refusal.description)
        default: self.init(503, "the identity store failed")
        }
    }

    var response: Response {
        let status = HTTPResponse.Status(code: status)
        let titles = [
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            413: "Content Too Large", 503: "Service Unavailable",
        ]
        let body: [String: Any] = [
            "type": "about:blank", "title": titles[self.status] ?? status.reasonPhrase, "status": self.status,
            "detail": detail,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        return JSONResponse.bytes(Array(data), contentType: "application/problem+json", status: status)
    }

    static func run(_ body: () throws -> Response) -> Response {
        do { return try body() } catch { return Problem(error).response }
    }
}

/// A JSON object request body; an empty body is an empty object.
struct JSONBody: @unchecked Sendable {
    // Only read after parsing, never mutated: safe to pass between tasks.
    let object: [String: Any]

    static func read(_ request: Request, limit: Int) async -> Result<JSONBody, Problem> {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: limit) } catch {
            return .failure(Problem(413, "the body is larger than \(limit) bytes"))
        }
        guard buffer.readableBytes > 0 else { return .success(JSONBody(object: [:])) }
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any]
        else { return .failure(Problem(400, "the body must be a JSON object")) }
        return .success(JSONBody(object: object))
    }

    func has(_ key: String) -> Bool { object[key] != nil }

    func string(_ key: String) throws -> String {
        guard let value = object[key] as? String, !value.isEmpty else {
            throw Problem(400, "'\(key)' (text) is required")
        }
        return value
    }

    func optionalString(_ key: String) throws -> String? {
        guard has(key) else { return nil }
        return try string(key)
    }

    func strings(_ key: String) throws -> [String] {
        guard let values = object[key] as? [Any], let strings = values as? [String] else {
            throw Problem(400, "'\(key)' must be a list of text values")
        }
        return strings
    }

    func bool(_ key: String) throws -> Bool {
        guard let value = object[key] as? Bool else { throw Problem(400, "'\(key)' must be true or false") }
        return value
    }

    func optionalInt(_ key: String) throws -> Int? {
        guard has(key) else { return nil }
        guard let value = object[key] as? Int, !(object[key] is Bool), value > 0 else {
            throw Problem(400, "'\(key)' must be a positive whole number of seconds")
        }
        return value
    }
}
