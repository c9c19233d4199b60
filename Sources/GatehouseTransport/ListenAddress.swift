/// A listener given as a URL: `mqtt://HOST:PORT`, `mqtts://HOST:PORT`, `ws://HOST:PORT/PATH`,
/// `wss://HOST:PORT/PATH` (IPv6 as `[::1]:1883`; the WebSocket path defaults to `/mqtt`).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case tcp = "mqtt"
        case tls = "mqtts"
        case ws = "ws"
        case wss = "wss"

        public var usesTLS: Bool { self == .tls || self == .wss }
        public var usesWebSocket: Bool { self == .ws || self == .wss }
    }

    public static let defaultWebSocketPath = "/mqtt"

    public var kind: Kind
    public var host: String
    public var port: Int
    /// The HTTP path a WebSocket upgrade must ask for; nil for mqtt and mqtts.
    public var path: String?

    public struct ParseError: Error, CustomStringConvertible, Sendable, Equatable {
        public let description: String

        public init(description: String) { self.description = description }
    }

    public init(kind: Kind = .tcp, host: String, port: Int, path: String? = nil) {
        self.kind = kind
        self.host = host
        self.port = port
        self.path = kind.usesWebSocket ? (path ?? Self.defaultWebSocketPath) : nil
    }

    public init(parsing text: String) throws(ParseError) {
        let parts = text.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw ParseError(description: "listen address '\(text)' must look like mqtt://HOST:PORT")
        }
        guard let kind = Kind(rawValue: String(parts[0]).lowercased()) else {
            throw ParseError(
                description: "listener scheme '\(parts[0])' is not one of mqtt, mqtts, ws, wss (in '\(text)')"
            )
        }
        var authority = parts[1]
        var path: String?
        if let slash = authority.firstIndex(of: "/") {
            guard kind.usesWebSocket else {
                throw ParseError(description: "listen address '\(text)' has a path, which only ws:// and wss:// take")
            }
            path = String(authority[slash...])
            authority = authority[..<slash]
        }
        let host: Substring
        let portText: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]"), authority[authority.index(after: close)...].hasPrefix(":")
            else { throw ParseError(description: "listen address '\(text)' has an unclosed IPv6 bracket or no port") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            portText = authority[authority.index(close, offsetBy: 2)...]
        } else {
            guard let colon = authority.lastIndex(of: ":") else {
                throw ParseError(description: "listen address '\(text)' has no port")
            }
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        }
        guard !host.isEmpty else { throw ParseError(description: "listen address '\(text)' has no host") }
        guard let port = Int(portText), (0...65_535).contains(port) else {
            throw ParseError(description: "listen address '\(text)' has an invalid port '\(portText)'")
        }
        self.init(kind: kind, host: String(host), port: port, path: path)
    }

    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "\(kind.rawValue)://\(shownHost):\(port)\(path ?? "")"
    }
}
