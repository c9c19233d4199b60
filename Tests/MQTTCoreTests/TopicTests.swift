import MQTTCore
import Testing

@Suite("topic names and filters")
struct TopicTests {
    /// The examples of MQTT 3.1.1 §4.7.1 and §4.7.2 (the same in 5.0 §4.7), plus edges.
    static let matchTable: [(filter: String, topic: String, matches: Bool)] = [
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/#", "sport", true),
        ("#", "sport/tennis", true),
        ("#", "/", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "sport", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("/finance", "/finance", true),
        ("/finance", "finance", false),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("+/tennis/#", "sport/tennis", true),
        ("+/+/+", "a/b", false),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("é/+", "é/€", true),
        // $-topics are not matched by a leading wildcard. [MQTT-4.7.2-1]
        ("#", "$SYS/broker/uptime", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/broker/uptime", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/+/uptime", "$SYS/broker/uptime", true),
    ]

    @Test("matching follows the spec's examples")
    func matching() {
        for row in Self.matchTable {
            #expect(
                MQTTTopic.matches(filter: row.filter, topic: row.topic) == row.matches, "\(row.filter) vs \(row.topic)")
        }
    }

    @Test("filter validation")
    func filterValidation() {
        for valid in ["#", "+", "sport/#", "sport/tennis/#", "+/+", "/+", "sport/+/player1", "a//b", "$SYS/#", "/"] {
            #expect(MQTTTopic.isValidTopicFilter(valid), "\(valid)")
        }
        for invalid in ["", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "sp+rt/a", "#/a", "a/#b", "++"] {
            #expect(!MQTTTopic.isValidTopicFilter(invalid), "\(invalid)")
        }
        #expect(!MQTTTopic.isValidTopicFilter(String(repeating: "a", count: 65_536)))
    }

    @Test("name validation")
    func nameValidation() {
        for valid in ["a", "/", "a/b", "$SYS/x", " ", "é"] { #expect(MQTTTopic.isValidTopicName(valid)) }
        for invalid in ["", "a/+", "a/#", "#", "+"] { #expect(!MQTTTopic.isValidTopicName(invalid)) }
    }

    @Test("$share/{group}/{filter} parsing")
    func sharedSubscriptions() throws {
        let shared = try MQTTTopicFilter(parsing: "$share/consumers/sport/+")
        #expect(shared.shareGroup == "consumers")
        #expect(shared.filter == "sport/+")
        #expect(shared.matches(topic: "sport/tennis"))
        let hashOnly = try MQTTTopicFilter(parsing: "$share/g/#")
        #expect(hashOnly.filter == "#" && hashOnly.isShared)
        let plain = try MQTTTopicFilter(parsing: "sport/#")
        #expect(plain.shareGroup == nil && plain.filter == "sport/#")
        // "$shared/…" is an ordinary filter whose first level happens to start with $share.
        #expect(try MQTTTopicFilter(parsing: "$shared/a").shareGroup == nil)

        let failures: [(String, MQTTTopicFilter.ParseError)] = [
            ("$share/g", .missingSharedFilter),
            ("$share/g/", .missingSharedFilter),
            ("$share//a", .invalidShareName),
            ("$share/g+/a", .invalidShareName),
            ("$share/#/a", .invalidShareName),
            ("$share/g/a#", .invalidFilter),
            ("a/#/b", .invalidFilter),
        ]
        for (text, error) in failures {
            #expect(throws: error, "\(text)") { try MQTTTopicFilter(parsing: text) }
        }
        #expect(MQTTTopicFilter.ParseError.invalidShareName.reasonCode == .topicFilterInvalid)
    }
}
