/// A topic name split into its levels once: a PUBLISH's level-limit check, its ACL decisions
/// and its subscription match all walk the same levels instead of each splitting the name.
public struct TopicLevels: Sendable {
    public let name: String
    public let levels: [Substring]

    /// Splits on UTF-8 bytes: `/` never occurs inside a multi-byte sequence, and walking bytes
    /// avoids the grapheme-cluster work of splitting a String by Character. One pass and one
    /// array: `split` then `map` cost a tenth of a PUBLISH's broker time.
    public init(_ name: String) {
        self.name = name
        var levels: [Substring] = []
        let bytes = name.utf8
        var start = bytes.startIndex
        var index = start
        while index != bytes.endIndex {
            if bytes[index] == UInt8(ascii: "/") {
                levels.append(name[start..<index])
                start = bytes.index(after: index)
            }
            bytes.formIndex(after: &index)
        }
        levels.append(name[start..<index])
        self.levels = levels
    }

    public var count: Int { levels.count }

    /// `$SYS/…` and the like: wildcards at the first level never match them. [MQTT-4.7.2-1]
    public var isDollarTopic: Bool { name.utf8.first == UInt8(ascii: "$") }
}
