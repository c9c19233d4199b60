import Foundation
import GatehouseIAM
import HTTPTypes
import Hummingbird

/// Identities and groups as SCIM 2.0 resources (RFC 7643), listed with `filter`
/// (`userName eq "…"`, `userName sw "…"`, `displayName eq "…"`), `startIndex` and `count`
/// (RFC 7644 §3.4.2). Gatehouse's own attributes (tenant, kind, roles) are in an extension.
enum SCIM {
    static let userSchema = "urn:ietf:params:scim:schemas:core:2.0:User"
    static let groupSchema = "urn:ietf:params:scim:schemas:core:2.0:Group"
    static let extensionSchema = "urn:gatehouse:params:scim:schemas:extension:2.0:Identity"
    static let listSchema = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    static let patchSchema = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

    static func user(_ identity: Identity) -> [String: Any] {
        [
            "schemas": [userSchema, extensionSchema], "id": identity.id, "userName": identity.name,
            "active": identity.enabled,
            extensionSchema: ["tenant": identity.tenant, "kind": identity.kind.rawValue, "roles": identity.roles],
            "meta": [
                "resourceType": "User", "created": iso8601(identity.createdAt),
                "location": "/scim/v2/Users/\(identity.id)",
            ],
        ]
    }

    static func group(_ group: Group) -> [String: Any] {
        [
            "schemas": [groupSchema, extensionSchema], "id": "\(group.tenant)/\(group.name)",
            "displayName": group.name, "members": group.members.map { ["display": $0] },
            extensionSchema: ["tenant": group.tenant, "roles": group.roles],
            "meta": ["resourceType": "Group"],
        ]
    }

    static func listUsers(_ store: IdentityStore, _ request: Request) -> Response {
        run {
            let filter = try Filter(request.query("filter"), attribute: "userName")
            let tenant = request.query("tenant")
            let identities = try store.identities(tenant: tenant).filter { filter.matches($0.name) }
            return try page(identities.map(user), request)
        }
    }

    static func showUser(_ store: IdentityStore, _ context: GatehouseRequestContext) -> Response {
        run { respond(user(try store.identity(id: try context.parameter("id")))) }
    }

    static func createUser(_ store: IdentityStore, _ call: AdminRoutes.AdminCall) -> Response {
        run {
            let name = try call.body.string("userName")
            let (attributes, tenant) = try extensionAttributes(call, of: "identity")
            let kindName = attributes["kind"] as? String ?? IdentityKind.user.rawValue
            guard let kind = IdentityKind(rawValue: kindName) else {
                throw Problem(400, "'kind' must be device, user, service or application")
            }
            let roles = attributes["roles"] as? [String] ?? []
            var identity = try store.addIdentity(name, tenant: tenant, kind: kind, roles: roles, actor: call.actor)
            if call.body.object["active"] as? Bool == false {
                try store.setIdentityEnabled(name, false, actor: call.actor)
                identity.enabled = false
            }
            return respond(user(identity), status: .created)
        }
    }

    /// PatchOp `replace` of `active` (enable or disable the identity).
    static func patchUser(_ store: IdentityStore, _ context: GatehouseRequestContext, _ call: AdminRoutes.AdminCall)
        -> Response
    {
        run {
            let identity = try store.identity(id: try context.parameter("id"))
            guard let operations = call.body.object["Operations"] as? [[String: Any]], !operations.isEmpty else {
                throw Problem(400, "a PatchOp needs 'Operations'")
            }
            for operation in operations {
                let op = (operation["op"] as? String)?.lowercased()
                let value = operation["value"]
                let active =
                    (operation["path"] as? String == "active" ? value as? Bool : nil)
                    ?? ((value as? [String: Any])?["active"] as? Bool)
                guard op == "replace", let active else {
                    throw Problem(
                        400, "only {\"op\": \"replace\", \"path\": \"active\", \"value\": true|false} is supported")
                }
                try store.setIdentityEnabled(identity.name, active, actor: call.actor)
            }
            return respond(user(try store.identity(id: identity.id)))
        }
    }

    static func listGroups(_ store: IdentityStore, _ request: Request) -> Response {
        run {
            let filter = try Filter(request.query("filter"), attribute: "displayName")
            let groups = try store.groups(tenant: request.query("tenant")).filter {
                filter.matches($0.name)
            }
            return try page(groups.map(group), request)
        }
    }

    static func createGroup(_ store: IdentityStore, _ call: AdminRoutes.AdminCall) -> Response {
        run {
            let name = try call.body.string("displayName")
            let (attributes, tenant) = try extensionAttributes(call, of: "group")
            try store.addGroup(name, tenant: tenant, roles: attributes["roles"] as? [String] ?? [], actor: call.actor)
            guard let created = try store.groups(tenant: tenant).first(where: { $0.name == name }) else {
                throw Problem(503, "the new group vanished")
            }
            return respond(group(created), status: .created)
        }
    }

    /// Gatehouse's extension of a resource being created, which must name its tenant.
    private static func extensionAttributes(_ call: AdminRoutes.AdminCall, of resource: String) throws -> (
        [String: Any], tenant: String
    ) {
        let attributes = call.body.object[extensionSchema] as? [String: Any] ?? [:]
        guard let tenant = attributes["tenant"] as? String else {
            throw Problem(400, "'\(extensionSchema)' must give the \(resource)'s 'tenant'")
        }
        return (attributes, tenant)
    }

    /// One page of a list: `startIndex` counts from 1; `count` is at most 1,000.
    private static func page(_ resources: [[String: Any]], _ request: Request) throws -> Response {
        let start =
            try request.query("startIndex").map { text in
                guard let value = Int(text), value >= 1 else { throw Problem(400, "'startIndex' must be 1 or more") }
                return value
            } ?? 1
        let count =
            try request.query("count").map { text in
                guard let value = Int(text), value >= 0 else { throw Problem(400, "'count' must be 0 or more") }
                return min(value, 1_000)
            } ?? 100
        let slice = resources.dropFirst(start - 1).prefix(count)
        return respond([
            "schemas": [listSchema], "totalResults": resources.count, "startIndex": start,
            "itemsPerPage": slice.count, "Resources": Array(slice),
        ])
    }

    private static func respond(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
        return JSONResponse.bytes(Array(data), contentType: "application/scim+json", status: status)
    }

    /// Refusals as SCIM error messages (RFC 7644 §3.12).
    private static func run(_ body: () throws -> Response) -> Response {
        do { return try body() } catch {
            let problem = error is Filter.Unsupported ? Problem(400, "\(error)") : Problem(error)
            var message: [String: Any] = [
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": String(problem.status),
                "detail": problem.detail,
            ]
            if problem.status == 409 { message["scimType"] = "uniqueness" }
            if error is Filter.Unsupported { message["scimType"] = "invalidFilter" }
            return respond(message, status: HTTPResponse.Status(code: problem.status))
        }
    }

    /// `ATTRIBUTE eq "value"` or `ATTRIBUTE sw "value"`; nothing else.
    struct Filter {
        struct Unsupported: Error {}

        let value: String?
        let prefix: Bool

        init(_ text: String?, attribute: String) throws {
            guard let text, !text.isEmpty else {
                value = nil
                prefix = false
                return
            }
            let parts = text.split(separator: " ", maxSplits: 2)
            guard parts.count == 3, parts[0].lowercased() == attribute.lowercased(),
                ["eq", "sw"].contains(parts[1].lowercased()), parts[2].hasPrefix("\""), parts[2].hasSuffix("\""),
                parts[2].count >= 2
            else { throw Unsupported() }
            value = String(parts[2].dropFirst().dropLast())
            prefix = parts[1].lowercased() == "sw"
        }

        func matches(_ name: String) -> Bool {
            guard let value else { return true }
            return prefix ? name.hasPrefix(value) : name == value
        }
    }
}

extension SCIM.Filter.Unsupported: CustomStringConvertible {
    var description: String { "only 'ATTRIBUTE eq \"value\"' and 'ATTRIBUTE sw \"value\"' filters are supported" }
}
