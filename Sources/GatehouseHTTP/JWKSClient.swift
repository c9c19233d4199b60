import AsyncHTTPClient
import Foundation
public import GatehouseIAM
public import NIOCore
import NIOHTTP1
public import NIOSSL

/// Fetches clients' `jwks_uri` documents over HTTPS with async-http-client: certificates
/// verified against the system roots or the configured CA file, small bodies, short timeouts.
public final class JWKSClient: JWKSFetcher {
    private let client: HTTPClient
    private static let maximumSize = 256 * 1024

    /// Shut down with `shutdown()` when the HTTP side stops.
    public init(trustRoots: NIOSSLTrustRoots = .default, group: any EventLoopGroup) {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = trustRoots
        tls.minimumTLSVersion = .tlsv12
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(5), read: .seconds(5)))
        configuration.httpVersion = .http1Only
        client = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
    }

    public func shutdown() async {
        try? await client.shutdown()
    }

    public func fetchJWKS(from url: String) async throws -> String {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Accept", value: "application/jwk-set+json, application/json")
        let response = try await client.execute(request, timeout: .seconds(10))
        guard response.status == .ok else { throw JWKSFetchError(url: url, status: Int(response.status.code)) }
        let body = try await response.body.collect(upTo: Self.maximumSize)
        return String(buffer: body)
    }
}

struct JWKSFetchError: Error, CustomStringConvertible {
    var url: String
    var status: Int
    var description: String { "\(url) answered \(status)" }
}
