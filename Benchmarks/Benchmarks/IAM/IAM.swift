import Benchmark
import Foundation
import GatehouseAuth
import GatehouseIAM
import JWTKit
import Logging

/// Claims as a trusted issuer would put them in a device's token.
private struct DeviceClaims: JWTPayload {
    var iss = "https://idp.example"
    var aud = "mqtt"
    var sub: String
    var tenant = "fleet"
    var scope = "device"
    var exp = Int(Date().timeIntervalSince1970) + 3_600
    var jti = UUID().uuidString

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A store with one device identity and its opaque token, and a trusted ES256 issuer whose key
/// signs `jwtCount` distinct tokens here.
private func makeStore(jwtCount: Int) async throws -> (store: IdentityStore, token: String, jwts: [String]) {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("bench-iam-\(UUID()).sqlite").path
    let store = try IdentityStore(path: path)
    try store.addTenant("fleet", actor: "bench")
    try store.addIdentity("sensor-1", tenant: "fleet", kind: .device, roles: ["device"], actor: "bench")
    let token = try store.createToken(for: "sensor-1", actor: "bench").token
    let key = ES256PrivateKey()
    guard let (x, y) = key.parameters else { fatalError("an EC key has parameters") }
    let jwk = #"{"kty":"EC","crv":"P-256","x":"\#(x)","y":"\#(y)","kid":"k1","alg":"ES256"}"#
    try store.addIssuer(
        TrustedIssuer(issuer: "https://idp.example", audience: "mqtt", jwks: jwk, rolesClaim: "scope"), actor: "bench")
    let signer = JWTKeyCollection()
    await signer.add(ecdsa: key, kid: "k1")
    var jwts: [String] = []
    for index in 0..<jwtCount { jwts.append(try await signer.sign(DeviceClaims(sub: "sensor-\(index)"), kid: "k1")) }
    return (store, token, jwts)
}

private func credentials(_ password: String) -> ConnectCredentials {
    ConnectCredentials(
        clientIdentifier: "sensor-1", username: nil, password: Array(password.utf8), remoteAddress: "10.0.0.1")
}

private let connectsPerIteration = 1_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal],
        maxDuration: .seconds(5),
        maxIterations: 50
    )
    let logger = Logger(label: "bench")

    // Each closure call is one sample; what it sets up before startMeasurement is not counted.
    // These are the CONNECT checks alone, on the event loop's immediate path.
    Benchmark("token ×\(connectsPerIteration)") { benchmark in
        let (store, token, _) = try await makeStore(jwtCount: 0)
        let authenticator = TokenAuthenticator(store: store, logger: logger)
        let attempt = credentials(token)
        _ = await authenticator.authenticate(attempt)  // loads the snapshot
        benchmark.startMeasurement()
        for _ in 0..<connectsPerIteration { blackHole(authenticator.authenticateImmediately(attempt)) }
    }

    // Each JWT seen for the first time: base64url and JSON decoding, one ES256 signature check.
    Benchmark("JWT first sight ×\(connectsPerIteration)") { benchmark in
        let (store, _, jwts) = try await makeStore(jwtCount: connectsPerIteration + 1)
        let authenticator = JWTAuthenticator(store: store, logger: logger)
        _ = await authenticator.authenticate(credentials(jwts[0]))  // resolves the key once
        let attempts = jwts.dropFirst().map(credentials)
        benchmark.startMeasurement()
        for attempt in attempts { blackHole(authenticator.authenticateImmediately(attempt)) }
    }

    // The same JWT again (a device reconnecting): a SHA-256 and the claim checks.
    Benchmark("JWT remembered ×\(connectsPerIteration)") { benchmark in
        let (store, _, jwts) = try await makeStore(jwtCount: 1)
        let authenticator = JWTAuthenticator(store: store, logger: logger)
        let attempt = credentials(jwts[0])
        _ = await authenticator.authenticate(attempt)
        benchmark.startMeasurement()
        for _ in 0..<connectsPerIteration { blackHole(authenticator.authenticateImmediately(attempt)) }
    }
}
