import Foundation
import GatehouseACL
import GatehouseAuth
import Testing

/// ACL files written to a temporary directory for each test.
final class ACLFiles {
    let directory: URL

    init(_ files: [String: String]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("acl-\(UUID().uuidString)")
        for (name, text) in files {
            let url = directory.appendingPathComponent(name)
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The errors of loading `name`, as `name:line:column: message` without the directory.
    func errors(_ name: String = "main.acl") -> [String] {
        do {
            _ = try ACLTable.load(file: path(name))
            return []
        } catch {
            return error.errors.map { $0.description.replacingOccurrences(of: directory.path + "/", with: "") }
        }
    }
}

private func principal(
    roles: [String], tenant: String = "acme", client: String = "sensor-1", user: String = "sensor-1",
    identity: String = "id_1"
) -> Principal {
    Principal(identityID: identity, username: user, clientIdentifier: client, tenant: tenant, roles: roles)
}

private let fleet = """
    # The fleet's rules
    default deny

    role device
      allow publish   tenants/%t/devices/%c/telemetry/#
      allow subscribe tenants/%t/devices/%c/commands/+
      deny  publish   tenants/%t/devices/%c/telemetry/debug/#   # never from the field

    role operator
      allow subscribe tenants/%t/devices/+/telemetry/#
      allow publish   tenants/%t/devices/+/commands/+
      deny  all       tenants/%t/devices/+/telemetry/secret

    role admin
      allow all #
      allow all $SYS/#
    """

@Suite("ACL decisions")
struct ACLDecisionTests {
    private func table() throws -> (ACLTable, ACLFiles) {
        let files = try ACLFiles(["main.acl": fleet])
        return (try ACLTable.load(file: files.path("main.acl")), files)
    }

    @Test(
        "publish: variables fill whole levels, deny beats allow, default deny",
        arguments: [
            ("tenants/acme/devices/sensor-1/telemetry/t", Decision.accept),
            ("tenants/acme/devices/sensor-1/telemetry", .accept),  // '#' also matches its parent
            ("tenants/acme/devices/sensor-1/telemetry/debug/x", .reject),  // deny beats allow
            ("tenants/acme/devices/sensor-2/telemetry/t", .reject),  // another client id
            ("tenants/other/devices/sensor-1/telemetry/t", .reject),  // another tenant
            ("tenants/acme/devices/sensor-1/commands/reboot", .reject),  // no publish rule
            ("elsewhere", .reject),
        ])
    func devicePublish(topic: String, expected: Decision) throws {
        let (table, _) = try table()
        #expect(table.decide(principal(roles: ["device"]), .publish, topic: topic).0 == expected)
    }

    @Test(
        "subscribe: a filter is accepted only where an allow rule covers all it can match and no deny touches it",
        arguments: [
            ("tenants/acme/devices/+/telemetry/#", Decision.reject),  // touches .../telemetry/secret
            ("tenants/acme/devices/a/telemetry/t", .accept),
            ("tenants/acme/devices/a/telemetry/+", .reject),  // '+' can be 'secret'
            ("tenants/acme/devices/a/telemetry/t/#", .accept),
            ("tenants/acme/devices/#", .reject),  // wider than the rule
            ("tenants/acme/#", .reject),
            ("tenants/other/devices/a/telemetry/t", .reject),
            ("#", .reject),
        ])
    func operatorSubscribe(filter: String, expected: Decision) throws {
        let (table, _) = try table()
        #expect(table.decide(principal(roles: ["operator"]), .subscribe, topic: filter).0 == expected)
    }

    @Test("the rule from the issue: devices/+/telemetry/# covers itself and its topics, not devices/#")
    func coverRule() throws {
        let files = try ACLFiles(["main.acl": "default deny\nrole r\n  allow subscribe devices/+/telemetry/#\n"])
        let table = try ACLTable.load(file: files.path("main.acl"))
        let someone = principal(roles: ["r"])
        #expect(table.decide(someone, .subscribe, topic: "devices/a/telemetry/t").0 == .accept)
        #expect(table.decide(someone, .subscribe, topic: "devices/+/telemetry/#").0 == .accept)
        #expect(table.decide(someone, .subscribe, topic: "devices/#").0 == .reject)
        #expect(table.decide(someone, .subscribe, topic: "devices/+/+/#").0 == .reject)
        // Delivery: a subscribe rule lets its topics be read, and only those.
        #expect(table.decide(someone, .read, topic: "devices/a/telemetry/t").0 == .accept)
        #expect(table.decide(someone, .read, topic: "devices/a/status").0 == .reject)
    }

    @Test("a variable whose value holds +, # or / or is empty matches nothing (no wildcard injection)")
    func injection() throws {
        let (table, _) = try table()
        for client in ["+", "#", "a/b", ""] {
            let attacker = principal(roles: ["device"], client: client)
            #expect(table.decide(attacker, .publish, topic: "tenants/acme/devices/\(client)/telemetry/t").0 == .reject)
            #expect(table.decide(attacker, .subscribe, topic: "tenants/acme/devices/+/commands/+").0 == .reject)
        }
        let wildTenant = principal(roles: ["operator"], tenant: "#")
        #expect(table.decide(wildTenant, .subscribe, topic: "tenants/#").0 == .reject)
    }

    @Test("$SYS is matched only by rules that name it; roles without rules get nothing")
    func systemTopics() throws {
        let (table, _) = try table()
        let files = try ACLFiles(["main.acl": "default deny\nrole wide\n  allow all #\n"])
        let wide = try ACLTable.load(file: files.path("main.acl"))
        #expect(wide.decide(principal(roles: ["wide"]), .subscribe, topic: "$SYS/broker/uptime").0 == .reject)
        #expect(wide.decide(principal(roles: ["wide"]), .read, topic: "$SYS/broker/uptime").0 == .reject)
        #expect(table.decide(principal(roles: ["admin"]), .subscribe, topic: "$SYS/#").0 == .accept)
        #expect(table.decide(principal(roles: ["admin"]), .publish, topic: "anything/at/all").0 == .accept)
        #expect(table.decide(principal(roles: []), .publish, topic: "anything").0 == .reject)
        #expect(table.decide(principal(roles: ["unknown"]), .read, topic: "anything").0 == .reject)
    }

    @Test("the deciding rule is reported for operators, with file and line")
    func explanation() throws {
        let (table, _) = try table()
        let (decision, rule) = table.decide(
            principal(roles: ["device"]), .publish, topic: "tenants/acme/devices/sensor-1/telemetry/debug/x")
        #expect(decision == .reject)
        #expect(rule?.line == 7 && rule?.text == "deny publish tenants/%t/devices/%c/telemetry/debug/#")
        #expect(table.decide(principal(roles: ["device"]), .publish, topic: "x").1 == nil)
    }

    @Test("includes add rules from other files; role * applies to everyone")
    func includes() throws {
        let files = try ACLFiles([
            "main.acl": "default deny\ninclude tenants/*.acl\nrole *\n  allow subscribe public/#\n",
            "tenants/acme.acl": "role acme-device\n  allow publish acme/%c/#\n",
            "tenants/zeta.acl": "role zeta-device\n  allow publish zeta/%c/#\n",
        ])
        let table = try ACLTable.load(file: files.path("main.acl"))
        #expect(table.ruleCount == 3 && table.files.count == 3)
        #expect(table.decide(principal(roles: ["zeta-device"]), .publish, topic: "zeta/sensor-1/t").0 == .accept)
        #expect(table.decide(principal(roles: ["acme-device"]), .publish, topic: "zeta/sensor-1/t").0 == .reject)
        #expect(table.decide(principal(roles: []), .subscribe, topic: "public/news").0 == .accept)
    }
}

@Suite("ACL parser errors")
struct ACLParserTests {
    @Test(
        "each mistake names file:line:column and what was expected",
        arguments: [
            ("role r\n  allow publish a\n", "main.acl:1:1: the file must say 'default deny'"),
            ("default allow\n", "main.acl:1:1: expected 'default deny': it is the only default"),
            ("default deny\nallow publish a\n", "main.acl:2:1: a rule must follow a 'role NAME' line"),
            ("default deny\nrole r\n  allow shout a\n", "main.acl:3:9: expected publish, subscribe, read or all"),
            ("default deny\nrole r\n  allow publish a/#/b\n", "main.acl:3:17: 'a/#/b' is not a valid topic filter"),
            ("default deny\nrole r\n  allow publish a/x%u\n", "main.acl:3:17: 'x%u': a variable is %u, %c, %t or %i"),
            ("default deny\nrole r\n  allow publish a/%z\n", "main.acl:3:17: '%z': a variable is %u, %c, %t or %i"),
            ("default deny\nrole r\n  allow publish\n", "main.acl:3:3: expected 'allow ACTIONS TOPIC'"),
            ("default deny\nrole r\n  allow publish a b\n", "main.acl:3:19: unexpected 'b' after the topic"),
            ("default deny\nrole a/b\n", "main.acl:2:6: a role name is letters, digits"),
            ("default deny\npermit all\n", "main.acl:2:1: expected 'default deny', 'include', 'role'"),
            ("default deny\ninclude missing.acl\n", "main.acl:2:9: cannot read"),
            ("default deny\ninclude main.acl\n", "main.acl:2:9: 'main.acl' includes itself (a cycle)"),
        ])
    func mistakes(text: String, expected: String) throws {
        let files = try ACLFiles(["main.acl": text])
        let errors = files.errors()
        #expect(errors.count == 1 && errors[0].hasPrefix(expected), "\(errors)")
    }

    @Test("every error of every file is reported, not just the first")
    func allErrors() throws {
        let files = try ACLFiles([
            "main.acl": "default deny\ninclude more.acl\nrole r\n  allow nothing a\n  deny publish #/a\n",
            "more.acl": "role s\n  allow publish %q\ndefault deny\n",
        ])
        let errors = files.errors()
        #expect(errors.count == 4, "\(errors)")
        #expect(errors.contains { $0.hasPrefix("more.acl:2:17:") })
        #expect(errors.contains { $0.hasPrefix("more.acl:3:1: 'default deny' belongs in the top file") })
        #expect(errors.contains { $0.hasPrefix("main.acl:4:9:") } && errors.contains { $0.hasPrefix("main.acl:5:16:") })
    }

    @Test("comments: whole lines and after a rule's topic; a topic may be '#'")
    func comments() throws {
        let files = try ACLFiles([
            "main.acl": "# header\ndefault deny # the only default\nrole r # a role\n  allow publish # # everything\n"
        ])
        #expect(files.errors().isEmpty)
        let table = try ACLTable.load(file: files.path("main.acl"))
        #expect(table.decide(principal(roles: ["r"]), .publish, topic: "any/topic").0 == .accept)
    }
}

@Suite("default ACL")
struct DefaultACLTests {
    @Test("every example under acl/examples lints clean")
    func examples() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../acl/examples"
        ).standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".acl") }
        #expect(files.count == 3)
        for file in files { _ = try ACLTable.load(file: directory.appendingPathComponent(file).path) }
    }

    @Test("acl/default.acl is the built-in default, and it lints clean")
    func sameText() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../acl/default.acl"
        ).standardized.path
        #expect(try String(contentsOfFile: file, encoding: .utf8) == DefaultACL.text)
        let table = try ACLTable.load(file: file)
        let admin = Principal(
            identityID: "i", username: "admin", clientIdentifier: "c", tenant: "default", roles: ["admin"])
        #expect(table.decide(admin, .subscribe, topic: "#").0 == .accept)
        #expect(table.decide(admin, .subscribe, topic: "$SYS/#").0 == .accept)
    }
}
