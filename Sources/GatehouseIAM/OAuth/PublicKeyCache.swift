import Crypto
import Foundation
import GatehouseCertificates
import JWTKit
import NIOConcurrencyHelpers

/// Fetches a JWKS document from a client's `jwks_uri`. The HTTP side implements it; the IAM
/// never opens a connection itself.
public protocol JWKSFetcher: Sendable {
    func fetchJWKS(from url: String) async throws -> String
}

/// The public keys of clients and assertion issuers, resolved once per (kid, alg). A fetched
/// JWKS is kept for `maximumAge`; a `kid` it does not hold makes it fetched again (at most
/// once a second), so a client that rotates its key needs no admin step (RFC 7523 with key
/// rotation, seed 004).
final class PublicKeyCache: Sendable {
    private struct Entry: Sendable {
        var keys: ResolvedKeySet
        var fetchedAt: ContinuousClock.Instant
    }

    private let fetcher: (any JWKSFetcher)?
    private let maximumAge: Duration
    private let minimumRefetchInterval: Duration = .seconds(1)
    private let entries = NIOLockedValueBox<[String: Entry]>([:])

    init(fetcher: (any JWKSFetcher)?, maximumAge: Duration) {
        self.fetcher = fetcher
        self.maximumAge = maximumAge
    }

    /// The key that must have signed a token with this header, or why there is none.
    func key(for source: PublicKeySource, keyID: String?, algorithm: String) async -> Result<
        any JWTAlgorithm, AssertionRefusal
    > {
        guard algorithm != "none" else { return .failure(.init("alg 'none' is not accepted")) }
        if let jwks = source.jwks {
            let slot = "inline:" + hexString(SHA256.hash(data: Array(jwks.utf8)))
            let keys: ResolvedKeySet
            if let cached = entries.withLockedValue({ $0[slot]?.keys }) {
                keys = cached
            } else {
                guard let parsed = await ResolvedKeySet(json: jwks) else {
                    return .failure(.init("the registered JWKS cannot be used"))
                }
                keys = parsed
                store(keys, slot: slot)
            }
            if keys.contains(keyID) || source.jwksURI == nil {
                return await keys.key(keyID: keyID, algorithm: algorithm)
            }
        }
        guard let uri = source.jwksURI else { return .failure(.init("no public keys registered")) }
        let slot = "uri:" + uri
        let clock = ContinuousClock()
        let cached = entries.withLockedValue { $0[slot] }
        let stale = cached.map { clock.now - $0.fetchedAt > maximumAge } ?? true
        let unknown = cached.map { !$0.keys.contains(keyID) && clock.now - $0.fetchedAt > minimumRefetchInterval }
        var keys = cached?.keys
        if stale || unknown == true, let fetched = await fetch(uri) {
            keys = fetched
            store(fetched, slot: slot)
        }
        guard let keys else { return .failure(.init("the client's jwks_uri could not be fetched")) }
        return await keys.key(keyID: keyID, algorithm: algorithm)
    }

    private func fetch(_ uri: String) async -> ResolvedKeySet? {
        guard let fetcher, let json = try? await fetcher.fetchJWKS(from: uri) else { return nil }
        return await ResolvedKeySet(json: json)
    }

    private func store(_ keys: ResolvedKeySet, slot: String) {
        entries.withLockedValue { entries in
            if entries.count >= 4_096 { entries.removeAll() }  // many clients' keys: start again
            entries[slot] = Entry(keys: keys, fetchedAt: ContinuousClock().now)
        }
    }
}

/// Why an assertion or a key was refused; the caller turns it into the right OAuth2 error.
struct AssertionRefusal: Error, Sendable {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}

/// One JWKS: the `kid`s it holds (checked before jwt-kit, which answers an unknown `kid`
/// with its default key) and jwt-kit's collection for turning a key into a verifier.
final class ResolvedKeySet: Sendable {
    private let collection: JWTKeyCollection
    private let keyIDs: Set<String>
    private let resolved = NIOLockedValueBox<[String: any JWTAlgorithm]>([:])

    init?(json: String) async {
        guard let set = PublishedKeySet(json: json), !set.keyIDs.isEmpty else { return nil }
        let collection = JWTKeyCollection()
        // Keys jwt-kit cannot read (unknown kty, HMAC) are left out, not fatal for the others.
        var usable = Set<String>()
        for key in set.keys {
            guard let keyID = key["kid"] as? String,
                let data = try? JSONSerialization.data(withJSONObject: key),
                let jwk = try? JSONDecoder().decode(JWK.self, from: data),
                (try? await collection.add(jwk: jwk)) != nil
            else { continue }
            usable.insert(keyID)
        }
        guard !usable.isEmpty else { return nil }
        self.collection = collection
        self.keyIDs = usable
    }

    /// A token without `kid` is accepted only where the set has a single key.
    func contains(_ keyID: String?) -> Bool {
        guard let keyID else { return keyIDs.count == 1 }
        return keyIDs.contains(keyID)
    }

    func key(keyID: String?, algorithm: String) async -> Result<any JWTAlgorithm, AssertionRefusal> {
        guard contains(keyID), let chosen = keyID ?? keyIDs.first else {
            return .failure(.init(keyID.map { "unknown key '\($0)'" } ?? "the token names no 'kid'"))
        }
        let slot = "\(algorithm) \(chosen)"
        if let key = resolved.withLockedValue({ $0[slot] }) { return .success(key) }
        guard let key = try? await collection.getKey(for: JWKIdentifier(string: chosen), alg: algorithm) else {
            return .failure(.init("key '\(chosen)' cannot verify \(algorithm)"))
        }
        // The algorithm is pinned to the key's own: no HS256 keyed with a public key.
        guard key.name == algorithm else {
            return .failure(.init("alg \(algorithm) is not key '\(chosen)''s algorithm (\(key.name))"))
        }
        resolved.withLockedValue { $0[slot] = key }
        return .success(key)
    }
}
