/// A listener given as a URL: `mqtt://HOST:PORT` (IPv6 as `[::1]:1883`).
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        case tcp = "mqtt"
    }

    public var kind: Kind
    public var host: String
    public var port: Int

    public struct ParseError: Error, CustomStringConvertible, Sendable, Equatable {
        public let description: String
    }

    public init(kind: Kind = .tcp, host: String, port: Int) {
        self.kind = kind
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(ParseError) {
        let parts = text.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw ParseError(description: "listen address '\(text)' must look like mqtt://HOST:PORT")
        }
        guard let kind = Kind(rawValue: String(parts[0])) else {
            throw ParseError(
                description: "listener scheme '\(parts[0])' is not supported yet; this build serves mqtt:// only"
            )
        }
        let authority = parts[1]
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
        self.init(kind: kind, host: String(host), port: port)
    }

    public var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "\(kind.rawValue)://\(shownHost):\(port)"
    }
}
