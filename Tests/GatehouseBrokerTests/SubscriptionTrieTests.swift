import GatehouseBroker
import MQTTCore
import Testing

@Suite("subscription trie")
struct SubscriptionTrieTests {
    private func entry(_ client: String, _ qos: MQTTQoS = .atMostOnce, noLocal: Bool = false, id: UInt32? = nil)
        -> SubscriptionEntry
    {
        SubscriptionEntry(clientID: client, options: .init(qos: qos, noLocal: noLocal), identifier: id)
    }

    @Test("matching agrees with MQTTTopic.matches on the spec's table")
    func agreesWithTopicMatcher() {
        let table: [(String, String)] = [
            ("sport/tennis/player1/#", "sport/tennis/player1"),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/x"),
            ("sport/#", "sport"), ("#", "sport/tennis"), ("sport/tennis/+", "sport/tennis/player1"),
            ("sport/tennis/+", "sport/tennis/player1/ranking"), ("sport/+", "sport"), ("sport/+", "sport/"),
            ("+/+", "/finance"), ("/+", "/finance"), ("+", "/finance"), ("#", "$SYS/broker"), ("$SYS/#", "$SYS/broker"),
            ("+/monitor", "$SYS/monitor"), ("a/b", "a/b/c"), ("a//b", "a//b"), ("a/+/b", "a//b"),
        ]
        for (filter, topic) in table {
            var trie = SubscriptionTrie()
            trie.insert(entry("c"), filter: filter)
            let matched = trie.match(topic: topic, publisherClientID: nil)["c"] != nil
            #expect(matched == MQTTTopic.matches(filter: filter, topic: topic), "\(filter) vs \(topic)")
        }
    }

    @Test("overlapping subscriptions give one delivery at the highest QoS with every identifier")
    func overlapping() {
        var trie = SubscriptionTrie()
        trie.insert(entry("c", .atMostOnce, id: 1), filter: "a/+")
        trie.insert(entry("c", .exactlyOnce, id: 2), filter: "a/#")
        trie.insert(entry("d", .atLeastOnce), filter: "a/b")
        let deliveries = trie.match(topic: "a/b", publisherClientID: nil)
        #expect(deliveries.count == 2)
        #expect(deliveries["c"]?.qos == .exactlyOnce)
        #expect(deliveries["c"]?.subscriptionIdentifiers.sorted() == [1, 2])
        #expect(deliveries["d"]?.qos == .atLeastOnce)
    }

    @Test("many overlapping clients: one delivery each, merged, past the match's index threshold too")
    func manyOverlapping() {
        var trie = SubscriptionTrie()
        let clients = (0..<40).map { "c\($0)" }
        for (number, client) in clients.enumerated() {
            trie.insert(entry(client, .atMostOnce, id: UInt32(number * 2 + 1)), filter: "a/+")
            trie.insert(entry(client, number.isMultiple(of: 2) ? .exactlyOnce : .atLeastOnce), filter: "a/#")
            trie.insert(entry(client, .atLeastOnce, id: UInt32(number * 2 + 2)), filter: "a/b")
        }
        let match = trie.matchAll(topic: "a/b", publisherClientID: nil)
        #expect(match.deliveries.count == clients.count)
        #expect(Set(match.deliveries.map(\.clientID)) == Set(clients))
        for (number, client) in clients.enumerated() {
            let delivery = match.byClient[client]
            #expect(delivery?.qos == (number.isMultiple(of: 2) ? .exactlyOnce : .atLeastOnce), "\(client)")
            #expect(delivery?.subscriptionIdentifiers.sorted() == [UInt32(number * 2 + 1), UInt32(number * 2 + 2)])
        }
    }

    @Test("No Local hides the client's own messages from that subscription only")
    func noLocal() {
        var trie = SubscriptionTrie()
        trie.insert(entry("me", noLocal: true), filter: "chat/#")
        trie.insert(entry("other"), filter: "chat/#")
        #expect(Set(trie.match(topic: "chat/x", publisherClientID: "me").keys) == ["other"])
        #expect(Set(trie.match(topic: "chat/x", publisherClientID: "other").keys) == ["me", "other"])
    }

    @Test("insert replaces, remove prunes, count follows")
    func insertAndRemove() {
        var trie = SubscriptionTrie()
        let insertedFresh = trie.insert(entry("c", .atMostOnce), filter: "a/b/c")
        let replaced = trie.insert(entry("c", .atLeastOnce), filter: "a/b/c")
        #expect(!insertedFresh && replaced)
        #expect(trie.count == 1)
        #expect(trie.match(topic: "a/b/c", publisherClientID: nil)["c"]?.qos == .atLeastOnce)
        let removedStranger = trie.remove(clientID: "x", filter: "a/b/c")
        let removedOwner = trie.remove(clientID: "c", filter: "a/b/c")
        #expect(!removedStranger && removedOwner)
        #expect(trie.count == 0)
        #expect(trie.match(topic: "a/b/c", publisherClientID: nil).isEmpty)
    }

    @Test("a bulk insert matches what one insert at a time builds, shared groups and replacements included")
    func bulkInsert() throws {
        let filters = ["fleet/+/status", "fleet/d1/#", "$share/g/fleet/#", "fleet/d1/#", "#", "$share/g/fleet/#"]
        let entries = try filters.enumerated().map { index, text in
            (
                entry("c\(index % 4)", index.isMultiple(of: 2) ? .atLeastOnce : .atMostOnce),
                try MQTTTopicFilter(parsing: text)
            )
        }
        var oneByOne = SubscriptionTrie()
        oneByOne.insert(entry("existing"), filter: "fleet/d1/status")
        var bulk = oneByOne
        for (subscription, filter) in entries { oneByOne.insert(subscription, filter: filter) }
        bulk.insert(contentsOf: entries)
        #expect(bulk.count == oneByOne.count)
        for topic in ["fleet/d1/status", "fleet/d2/status", "fleet/d1/x/y", "other"] {
            let expected = oneByOne.matchAll(topic: topic, publisherClientID: nil)
            let actual = bulk.matchAll(topic: topic, publisherClientID: nil)
            #expect(actual.byClient.mapValues(\.qos) == expected.byClient.mapValues(\.qos), "\(topic)")
            #expect(
                actual.sharedGroups.map { $0.members.map(\.clientID) }
                    == expected.sharedGroups.map { $0.members.map(\.clientID) })
        }
    }

    @Test("a snapshot taken before an update is not changed by it")
    func snapshotsAreImmutable() {
        let index = SubscriptionIndex()
        index.update { $0.insert(entry("c"), filter: "a") }
        let before = index.snapshot
        index.update { $0.insert(entry("d"), filter: "a") }
        #expect(before.match(topic: "a", publisherClientID: nil).count == 1)
        #expect(index.snapshot.match(topic: "a", publisherClientID: nil).count == 2)
    }

    @Test("a shared group rotates through its members and keeps its place when one leaves")
    func sharedGroups() throws {
        var trie = SubscriptionTrie()
        let filter = try MQTTTopicFilter(parsing: "$share/workers/jobs/+")
        for member in ["a", "b", "c"] { trie.insert(entry(member), filter: filter) }
        trie.insert(entry("solo"), filter: "jobs/+")
        let match = trie.matchAll(topic: "jobs/1", publisherClientID: nil)
        #expect(Set(match.byClient.keys) == ["solo"])
        #expect(match.sharedGroups.count == 1)
        let group = try #require(match.sharedGroups.first)
        let firsts = (0..<6).compactMap { _ in group.rotation().first { _ in true }?.clientID }
        #expect(firsts == ["a", "b", "c", "a", "b", "c"])

        let removed = trie.remove(clientID: "b", filter: filter)
        #expect(removed && trie.count == 3)
        let after = try #require(trie.matchAll(topic: "jobs/1", publisherClientID: nil).sharedGroups.first)
        #expect(after.members.map(\.clientID) == ["a", "c"])
        for member in ["a", "c"] { trie.remove(clientID: member, filter: filter) }
        #expect(trie.matchAll(topic: "jobs/1", publisherClientID: nil).sharedGroups.isEmpty)
    }
}
