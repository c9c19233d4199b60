import Foundation
import GatehouseIAM
import HTTPTypes
import Hummingbird

/// The fields of an `application/x-www-form-urlencoded` body (RFC 6749 §3.2), each at most once.
struct OAuthForm: Sendable {
    private let fields: [String: String]

    subscript(name: String) -> String? { fields[name] }

    init(fields: [String: String]) { self.fields = fields }

    static func read(_ request: Request, limit: Int) async -> Result<OAuthForm, OAuthError> {
        let contentType = request.headers[.contentType]?.lowercased() ?? ""
        guard contentType.hasPrefix("application/x-www-form-urlencoded") else {
            return .failure(OAuthError(.invalidRequest, "the body must be application/x-www-form-urlencoded"))
        }
        let body: ByteBuffer
        do { body = try await request.body.collect(upTo: limit) } catch {
            return .failure(OAuthError(.invalidRequest, "the body is larger than \(limit) bytes"))
        }
        return parse(String(buffer: body))
    }

    static func parse(_ text: String) -> Result<OAuthForm, OAuthError> {
        var fields: [String: String] = [:]
        for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            // Form encoding writes a space as '+'; anything not valid percent-encoding is refused,
            // never trapped on (URLComponents' setter would stop the process).
            guard let name = parts[0].replacingOccurrences(of: "+", with: " ").removingPercentEncoding,
                let value = (parts.count == 2 ? parts[1] : "").replacingOccurrences(of: "+", with: " ")
                    .removingPercentEncoding
            else { return .failure(OAuthError(.invalidRequest, "the body is not valid form encoding")) }
            guard !name.isEmpty else { continue }
            guard fields[name] == nil else {
                return .failure(OAuthError(.invalidRequest, "'\(name)' is given more than once"))
            }
            fields[name] = value
        }
        return .success(OAuthForm(fields: fields))
    }

    static let clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    /// The one client authentication method the request uses (RFC 6749 §2.3: no more than one).
    func clientAuthentication(authorization: String?) -> Result<ClientAuthentication, OAuthError> {
        var found: [ClientAuthentication] = []
        if let authorization, authorization.lowercased().hasPrefix("basic ") {
            guard let basic = Self.basic(authorization) else {
                return .failure(OAuthError(.invalidClient, "the Basic credentials are malformed"))
            }
            found.append(.secret(clientID: basic.0, secret: basic.1))
        }
        if let secret = self["client_secret"] {
            guard let clientID = self["client_id"], !clientID.isEmpty else {
                return .failure(OAuthError(.invalidRequest, "'client_secret' needs 'client_id'"))
            }
            found.append(.secret(clientID: clientID, secret: secret))
        }
        if let type = self["client_assertion_type"] {
            guard type == Self.clientAssertionType else {
                return .failure(OAuthError(.invalidClient, "client_assertion_type must be \(Self.clientAssertionType)"))
            }
            guard let assertion = self["client_assertion"], !assertion.isEmpty else {
                return .failure(OAuthError(.invalidRequest, "'client_assertion' is missing"))
            }
            found.append(.assertion(clientID: self["client_id"], assertion: assertion))
        } else if self["client_assertion"] != nil {
            return .failure(OAuthError(.invalidRequest, "'client_assertion' needs 'client_assertion_type'"))
        }
        guard found.count <= 1 else {
            return .failure(OAuthError(.invalidRequest, "more than one client authentication method"))
        }
        return .success(found.first ?? .none)
    }

    /// `Basic base64(urlencode(id):urlencode(secret))`, RFC 6749 §2.3.1.
    static func basic(_ header: String) -> (String, String)? {
        let encoded = header.dropFirst("basic ".count).trimmingCharacters(in: .whitespaces)
        guard let data = Data(base64Encoded: encoded), let text = String(data: data, encoding: .utf8),
            let colon = text.firstIndex(of: ":")
        else { return nil }
        func decoded(_ part: Substring) -> String? {
            part.replacingOccurrences(of: "+", with: " ").removingPercentEncoding
        }
        guard let id = decoded(text[..<colon]), !id.isEmpty, let secret = decoded(text[text.index(after: colon)...])
        else { return nil }
        return (id, secret)
    }

    static func bearer(_ header: String?) -> String? {
        guard let header, header.lowercased().hasPrefix("bearer ") else { return nil }
        return header.dropFirst("bearer ".count).trimmingCharacters(in: .whitespaces)
    }
}

extension ClientAuthentication {
    func usesBasic(_ authorization: String?) -> Bool {
        authorization?.lowercased().hasPrefix("basic ") == true
    }
}

/// JSON responses: RFC 6749 §5.2 error objects, token responses with `no-store`.
enum JSONResponse {
    static func object(_ object: [String: Any], status: HTTPResponse.Status = .ok, noStore: Bool = false) -> Response {
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        var response = bytes(Array(data), contentType: "application/json", status: status)
        if noStore {
            response.headers[.cacheControl] = "no-store"
            if let pragma = HTTPField.Name("Pragma") { response.headers[pragma] = "no-cache" }
        }
        return response
    }

    static func encoded(_ value: some Encodable) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        var response = bytes(Array(data), contentType: "application/json")
        response.headers[.cacheControl] = "no-store"
        return response
    }

    static func bytes(_ bytes: [UInt8], contentType: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: contentType],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// With `basicChallenge`, a 401 carries `WWW-Authenticate: Basic` (RFC 6749 §5.2).
    static func error(_ error: OAuthError, basicChallenge: Bool = false) -> Response {
        var response = object(
            ["error": error.code.rawValue, "error_description": error.reason],
            status: HTTPResponse.Status(code: error.status), noStore: true)
        if error.status == 401 {
            response.headers[.wwwAuthenticate] =
                basicChallenge ? "Basic realm=\"gatehouse\"" : "Bearer realm=\"gatehouse\", error=\"invalid_client\""
        }
        return response
    }
}
