import GatehouseAuth
import Testing

@Suite("topic levels")
struct TopicLevelsTests {
    @Test(
        "a topic splits at every '/', empty levels kept, multi-byte characters whole",
        arguments: [
            ("", [""]), ("/", ["", ""]), ("a", ["a"]), ("a//b/", ["a", "", "b", ""]),
            ("/tenants/acme/devices/d-1", ["", "tenants", "acme", "devices", "d-1"]),
            ("ü/€/𝄞x", ["ü", "€", "𝄞x"]), ("$SYS/broker", ["$SYS", "broker"]),
        ])
    func splits(topic: String, expected: [String]) {
        let levels = TopicLevels(topic)
        #expect(levels.levels.map(String.init) == expected)
        #expect(levels.count == expected.count)
        // The levels are slices of the name itself, joined back they are the name.
        #expect(levels.levels.joined(separator: "/") == topic)
        #expect(levels.isDollarTopic == topic.hasPrefix("$"))
    }
}
