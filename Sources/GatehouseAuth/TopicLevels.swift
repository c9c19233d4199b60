/// A topic name split into its levels once: a PUBLISH's level-limit check, its ACL decisions
/// and its subscription match all walk the same levels instead of each splitting the name.
public struct TopicLevels: Sendable {
    public let name: String
    public let levels: [Substring]

    /// Splits on UTF-8 bytes: `/` never occurs inside a multi-byte sequence, and walking bytes
    /// avoids the grapheme-cluster work of splitting a String by Character.
    public init(_ name: String) {
        self.name = name
        levels = name.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map {
            Substring($0)
        }
    }

    public var count: Int { levels.count }

    /// `$SYS/…` and the like: wildcards at the first level never match them. [MQTT-4.7.2-1]
    public var isDollarTopic: Bool { name.utf8.first == UInt8(ascii: "$") }
}
