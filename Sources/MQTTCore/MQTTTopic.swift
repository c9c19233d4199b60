/// Topic names and filters (§4.7): validation and matching on UTF-8 bytes, without
/// splitting into per-level strings.
public enum MQTTTopic {
    static let slash = UInt8(ascii: "/")
    static let plus = UInt8(ascii: "+")
    static let hash = UInt8(ascii: "#")
    static let dollar = UInt8(ascii: "$")

    /// A topic name: at least one byte, no wildcards, fits a UTF-8 string. [MQTT-4.7.3-1],
    /// [MQTT-3.3.2-2]
    public static func isValidTopicName(_ name: String) -> Bool {
        let bytes = name.utf8
        guard !bytes.isEmpty && bytes.count <= Int(UInt16.max) else { return false }
        return !bytes.contains { $0 == plus || $0 == hash }
    }

    /// A topic filter: `#` only as the whole last level, `+` only as a whole level.
    /// [MQTT-4.7.1-1], [MQTT-4.7.1-2]
    public static func isValidTopicFilter(_ filter: String) -> Bool {
        let bytes = Array(filter.utf8)
        guard !bytes.isEmpty && bytes.count <= Int(UInt16.max) else { return false }
        for (index, byte) in bytes.enumerated() where byte == plus || byte == hash {
            let startsLevel = index == 0 || bytes[index - 1] == slash
            let endsLevel = index == bytes.count - 1 || bytes[index + 1] == slash
            guard startsLevel && endsLevel else { return false }
            if byte == hash && index != bytes.count - 1 { return false }
        }
        return true
    }

    /// Whether `topic` (a valid topic name) matches `filter` (a valid filter, without any
    /// `$share/` prefix). Topics starting with `$` are not matched by a filter starting with a
    /// wildcard. [MQTT-4.7.2-1]
    public static func matches(filter: String, topic: String) -> Bool {
        var filter = filter
        var topic = topic
        return filter.withUTF8 { f in topic.withUTF8 { t in matches(filter: f, topic: t) } }
    }

    public static func matches(filter f: UnsafeBufferPointer<UInt8>, topic t: UnsafeBufferPointer<UInt8>) -> Bool {
        if let first = t.first, first == dollar, let filterFirst = f.first, filterFirst == plus || filterFirst == hash {
            return false
        }
        var filterIndex = 0
        var topicIndex = 0
        var topicExhausted = false
        while true {
            let filterEnd = levelEnd(f, from: filterIndex)
            let filterLevelLength = filterEnd - filterIndex
            let isSingleByte = filterLevelLength == 1
            // `#` matches the parent level and everything below it.
            if isSingleByte && f[filterIndex] == hash { return true }
            if topicExhausted { return false }
            let topicEnd = levelEnd(t, from: topicIndex)
            if !(isSingleByte && f[filterIndex] == plus) {
                guard filterLevelLength == topicEnd - topicIndex else { return false }
                for offset in 0..<filterLevelLength where f[filterIndex + offset] != t[topicIndex + offset] {
                    return false
                }
            }
            let filterHasMore = filterEnd < f.count
            let topicHasMore = topicEnd < t.count
            guard filterHasMore else { return !topicHasMore }
            filterIndex = filterEnd + 1
            if topicHasMore { topicIndex = topicEnd + 1 } else { topicExhausted = true }
        }
    }

    private static func levelEnd(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        var index = start
        while index < bytes.count && bytes[index] != slash { index += 1 }
        return index
    }
}

/// A subscription's filter, with its `$share/{ShareName}/` prefix parsed off. [MQTT-4.8.2]
public struct MQTTTopicFilter: Hashable, Sendable {
    public static let sharePrefix = "$share/"

    /// The filter that topics are matched against.
    public let filter: String
    /// The share group of a shared subscription; nil for an ordinary one.
    public let shareGroup: String?

    public enum ParseError: Error, Hashable, Sendable {
        case invalidFilter
        /// Empty share name or one holding `+`, `#` or `/`. [MQTT-4.8.2-1], [MQTT-4.8.2-2]
        case invalidShareName
        /// `$share/{ShareName}` with no filter after it.
        case missingSharedFilter

        /// SUBACK reason code for a 5.0 client.
        public var reasonCode: MQTTReasonCode { .topicFilterInvalid }
    }

    public init(parsing text: String) throws(ParseError) {
        guard text.hasPrefix(Self.sharePrefix) else {
            guard MQTTTopic.isValidTopicFilter(text) else { throw .invalidFilter }
            self.filter = text
            self.shareGroup = nil
            return
        }
        let rest = text.utf8.dropFirst(Self.sharePrefix.utf8.count)
        guard let slash = rest.firstIndex(of: MQTTTopic.slash) else { throw .missingSharedFilter }
        let group = rest[rest.startIndex..<slash]
        guard !group.isEmpty, !group.contains(MQTTTopic.plus), !group.contains(MQTTTopic.hash) else {
            throw .invalidShareName
        }
        let filter = String(Substring(text.utf8[text.utf8.index(after: slash)...]))
        guard !filter.isEmpty else { throw .missingSharedFilter }
        guard MQTTTopic.isValidTopicFilter(filter) else { throw .invalidFilter }
        self.filter = filter
        self.shareGroup = String(Substring(group))
    }

    /// A filter already known to be a valid, ordinary one (no `$share/` parsing).
    public init(uncheckedFilter filter: String) {
        self.filter = filter
        self.shareGroup = nil
    }

    public var isShared: Bool { shareGroup != nil }

    /// The filter as the client wrote it, `$share/{name}/` included.
    public var text: String { shareGroup.map { Self.sharePrefix + $0 + "/" + filter } ?? filter }

    public func matches(topic: String) -> Bool { MQTTTopic.matches(filter: filter, topic: topic) }
}
