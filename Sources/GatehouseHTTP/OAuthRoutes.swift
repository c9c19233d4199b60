import Foundation
import GatehouseAuth
import GatehouseIAM
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The OAuth2 routes: small functions over the IAM's `OAuthServer`, each error an RFC 6749
/// §5.2 JSON object.
struct OAuthRoutes: Sendable {
    let oauth: OAuthServer
    let settings: HTTPSettings
    let limiter: TokenRateLimiter
    let scheme: String
    let logger: Logger

    /// Every route, as the OpenAPI document lists it: method and path.
    static let paths: [(method: String, path: String)] = [
        ("post", "/oauth/token"),
        ("post", "/oauth/revoke"),
        ("post", "/oauth/introspect"),
        ("get", "/.well-known/jwks.json"),
        ("get", "/.well-known/oauth-authorization-server"),
        ("get", "/.well-known/openid-configuration"),
        ("get", "/openapi.json"),
    ]

    func add(to router: Router<GatehouseRequestContext>) {
        router.post("/oauth/token") { request, context in await token(request, context) }
        router.post("/oauth/revoke") { request, context in await revoke(request, context) }
        router.post("/oauth/introspect") { request, context in await introspect(request, context) }
        router.get("/.well-known/jwks.json") { request, _ in await jwks(request) }
        router.get("/.well-known/oauth-authorization-server") { request, _ in
            JSONResponse.object(metadata(request, openID: false))
        }
        router.get("/.well-known/openid-configuration") { request, _ in
            JSONResponse.object(metadata(request, openID: true))
        }
        router.get("/openapi.json") { _, _ in
            JSONResponse.bytes(PackageResources.openapi_json, contentType: "application/vnd.oai.openapi+json")
        }
    }

    // MARK: Token endpoint

    private func token(_ request: Request, _ context: GatehouseRequestContext) async -> Response {
        let form: OAuthForm
        switch await OAuthForm.read(request, limit: settings.maximumBodySize) {
        case .failure(let error): return JSONResponse.error(error)
        case .success(let read): form = read
        }
        let client: ClientAuthentication
        switch form.clientAuthentication(authorization: request.headers[.authorization]) {
        case .failure(let error): return JSONResponse.error(error, basicChallenge: true)
        case .success(let found): client = found
        }
        guard limiter.admit(address: context.remoteAddress, client: client.claimedID) else {
            logger.notice(
                "token request refused: rate limit",
                metadata: ["remote": "\(context.remoteAddress ?? "?")", "client_id": "\(client.claimedID ?? "-")"])
            var response = JSONResponse.error(OAuthError(.temporarilyUnavailable, "too many token requests"))
            response.status = .tooManyRequests
            response.headers[.retryAfter] = "1"
            return response
        }
        let tokenRequest = TokenRequest(
            grantType: form["grant_type"], scope: form["scope"], assertion: form["assertion"],
            refreshToken: form["refresh_token"], client: client, tokenEndpoint: endpoint(request, "/oauth/token"))
        switch await oauth.token(tokenRequest) {
        case .failure(let error):
            // The reason, never the request's secrets.
            logger.notice(
                "token request refused",
                metadata: [
                    "error": "\(error.code.rawValue)", "reason": "\(error.reason)",
                    "grant_type": "\(form["grant_type"] ?? "-")", "client_id": "\(client.claimedID ?? "-")",
                    "remote": "\(context.remoteAddress ?? "?")",
                ])
            return JSONResponse.error(error, basicChallenge: client.usesBasic(request.headers[.authorization]))
        case .success(let issued):
            // Every issued token is recorded in the store (`iam jwt list`); the log line is for debugging.
            logger.debug(
                "token issued",
                metadata: [
                    "grant_type": "\(form["grant_type"] ?? "-")", "client_id": "\(issued.clientID)",
                    "scope": "\(issued.scope)",
                ])
            var body: [String: Any] = [
                "access_token": issued.accessToken, "token_type": "Bearer", "expires_in": issued.expiresIn,
                "scope": issued.scope,
            ]
            if let refresh = issued.refreshToken { body["refresh_token"] = refresh }
            return JSONResponse.object(body, noStore: true)
        }
    }

    // MARK: Revocation and introspection

    private func revoke(_ request: Request, _ context: GatehouseRequestContext) async -> Response {
        let form: OAuthForm
        switch await OAuthForm.read(request, limit: settings.maximumBodySize) {
        case .failure(let error): return JSONResponse.error(error)
        case .success(let read): form = read
        }
        guard let token = form["token"], !token.isEmpty else {
            return JSONResponse.error(OAuthError(.invalidRequest, "'token' is missing"))
        }
        // RFC 7009 §2.1: a client that authenticates revokes only its own tokens.
        let clientID: String?
        switch await presentedClient(request, form) {
        case .refused(let answer): return answer
        case .none: clientID = nil
        case .client(let found): clientID = found
        }
        do { try await oauth.revoke(token, client: clientID) } catch {
            return JSONResponse.error(OAuthError(.temporarilyUnavailable, "the identity store failed"))
        }
        // RFC 7009 §2.2: 200 whether or not the token was known.
        return JSONResponse.object([:], noStore: true)
    }

    /// RFC 7662: callers authenticate as a client (which sees only its own tokens) or with an
    /// admin token as bearer (which sees all).
    private func introspect(_ request: Request, _ context: GatehouseRequestContext) async -> Response {
        let form: OAuthForm
        switch await OAuthForm.read(request, limit: settings.maximumBodySize) {
        case .failure(let error): return JSONResponse.error(error)
        case .success(let read): form = read
        }
        let requester: String?
        if let bearer = OAuthForm.bearer(request.headers[.authorization]) {
            guard let principal = await oauth.store.principal(bearerToken: bearer), principal.roles.contains("admin")
            else {
                return JSONResponse.error(OAuthError(.invalidClient, "introspection needs an admin token or a client"))
            }
            requester = nil
        } else {
            switch await presentedClient(request, form) {
            case .refused(let answer): return answer
            case .none:
                return JSONResponse.error(
                    OAuthError(.invalidClient, "introspection needs an admin token or client authentication"),
                    basicChallenge: true)
            case .client(let clientID): requester = clientID
            }
        }
        guard let token = form["token"], !token.isEmpty else {
            return JSONResponse.error(OAuthError(.invalidRequest, "'token' is missing"))
        }
        let answer = await oauth.introspect(token, requester: requester)
        return JSONResponse.encoded(answer)
    }

    private enum PresentedClient {
        case none
        case client(String)
        /// The `invalid_client` answer for a client authentication that failed.
        case refused(Response)
    }

    /// The client the request's client authentication names, if it carries one.
    private func presentedClient(_ request: Request, _ form: OAuthForm) async -> PresentedClient {
        switch form.clientAuthentication(authorization: request.headers[.authorization]) {
        case .failure(let error): return .refused(JSONResponse.error(error, basicChallenge: true))
        case .success(.none): return .none
        case .success(let authentication):
            do {
                let client = try await oauth.authenticate(
                    authentication, tokenEndpoint: endpoint(request, "/oauth/token"))
                return .client(client.clientID)
            } catch {
                let refusal = error as? OAuthError ?? OAuthError(.invalidClient, "client authentication failed")
                return .refused(JSONResponse.error(refusal, basicChallenge: true))
            }
        }
    }

    // MARK: Keys and metadata

    private func jwks(_ request: Request) async -> Response {
        guard let document = try? await oauth.publishedKeys() else {
            return JSONResponse.error(OAuthError(.temporarilyUnavailable, "the identity store failed"))
        }
        return JSONResponse.bytes(Array(document.utf8), contentType: "application/jwk-set+json")
    }

    /// RFC 8414 metadata; the OpenID alias carries the fields that apply to it.
    private func metadata(_ request: Request, openID: Bool) -> [String: Any] {
        var fields: [String: Any] = [
            "issuer": oauth.store.issuerIdentifier,
            "token_endpoint": endpoint(request, "/oauth/token"),
            "jwks_uri": endpoint(request, "/.well-known/jwks.json"),
            "grant_types_supported": OAuthGrant.allCases.map(\.grantType),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": Self.assertionAlgorithms,
            "response_types_supported": ["token"],
            "scopes_supported": [String](),
        ]
        if openID {
            fields["subject_types_supported"] = ["public"]
            fields["id_token_signing_alg_values_supported"] = ["ES256"]
        } else {
            fields["revocation_endpoint"] = endpoint(request, "/oauth/revoke")
            fields["revocation_endpoint_auth_methods_supported"] = [
                "none", "client_secret_basic", "client_secret_post", "private_key_jwt",
            ]
            fields["introspection_endpoint"] = endpoint(request, "/oauth/introspect")
            fields["introspection_endpoint_auth_methods_supported"] = [
                "client_secret_basic", "client_secret_post", "private_key_jwt", "bearer",
            ]
        }
        return fields
    }

    static let assertionAlgorithms = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "EdDSA"]

    /// An absolute URL of this server: the configured public URL, else the request's own.
    private func endpoint(_ request: Request, _ path: String) -> String {
        if let base = settings.publicURL { return base.trimmingSuffix("/") + path }
        return "\(scheme)://\(request.head.authority ?? "localhost")\(path)"
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
