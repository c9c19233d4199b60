import Foundation
import Testing

@testable import GatehouseHTTP

/// The OpenAPI document the HTTP side serves: valid OpenAPI 3.1, listing exactly the routes
/// the server has, and exercised by schemathesis without a server error.
@Suite("10 OpenAPI document", .serialized)
struct OpenAPITests {
    private func startBroker() async throws -> (BrokerProcess, Int) {
        let broker = try BrokerProcess(listeners: ["mqtt://127.0.0.1:0", "http://127.0.0.1:0"])
        try await broker.waitUntilListening()
        return (broker, try #require(broker.ports["http"]))
    }

    @Test("openapi-spec-validator accepts it; its paths are the server's routes, and each one answers")
    func documentMatchesRoutes() async throws {
        let (broker, port) = try await startBroker()
        let fetched = try await runTool("curl", ["-sf", "http://127.0.0.1:\(port)/openapi.json"])
        #expect(fetched.status == 0)
        let document = try #require(
            try JSONSerialization.jsonObject(with: Data(fetched.output.utf8)) as? [String: Any])
        #expect(document["openapi"] as? String == "3.1.0")
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        let methods: Set = ["get", "post", "put", "patch", "delete"]
        let documented = Set(
            paths.flatMap { path, operations in operations.keys.filter(methods.contains).map { "\($0) \(path)" } })
        let routed = Set(HTTPServer.documentedRoutes.map { "\($0.method) \($0.path)" })
        #expect(documented == routed)
        for route in HTTPServer.documentedRoutes {
            let status = try await runTool(
                "curl",
                [
                    "-s", "-g", "-o", "/dev/null", "-w", "%{http_code}", "-X", route.method.uppercased(),
                    "http://127.0.0.1:\(port)\(route.path)",
                ])
            #expect(status.output != "404" && !status.output.hasPrefix("5"), "\(route): \(status.output)")
        }
        let validated = try await runTool(
            "python3",
            [
                "-c",
                "import json,sys,urllib.request; from openapi_spec_validator import validate; "
                    + "validate(json.load(urllib.request.urlopen(sys.argv[1]))); print('valid')",
                "http://127.0.0.1:\(port)/openapi.json",
            ])
        #expect(validated.status == 0 && validated.output.contains("valid"), "\(validated.output)")
        #expect(try await broker.stop() == 0)
    }

    @Test("GET /healthz answers; GET /readyz is 200 with every check ok, and a 503 naming a failing check")
    func health() async throws {
        let (broker, port) = try await startBroker()
        let alive = try await runTool("curl", ["-s", "-w", " %{http_code}", "http://127.0.0.1:\(port)/healthz"])
        #expect(alive.output == #"{"status":"ok"} 200"#, "\(alive.output)")
        let ready = try await runTool("curl", ["-s", "-w", " %{http_code}", "http://127.0.0.1:\(port)/readyz"])
        #expect(
            ready.output == #"{"checks":{"identity_store":"ok","mqtt_listeners":"ok"},"status":"ready"} 200"#,
            "\(ready.output)")
        let (isReady, body) = await HealthRoutes.readiness([
            ReadinessCheck(name: "mqtt_listeners") { false }, ReadinessCheck(name: "identity_store") { true },
        ])
        #expect(!isReady && body["failing"] as? [String] == ["mqtt_listeners"])
        #expect(try await broker.stop() == 0)
    }

    @Test("schemathesis, as an admin: a bounded number of generated requests to every operation, none a 5xx")
    func schemathesisFindsNoServerError() async throws {
        let (broker, port) = try await startBroker()
        let token = try String(
            contentsOf: broker.dataDirectory.appendingPathComponent("admin.token"), encoding: .utf8
        ).trimmingCharacters(in: .whitespacesAndNewlines)
        let result = try await runTool(
            "schemathesis",
            [
                "run", "http://127.0.0.1:\(port)/openapi.json", "--checks", "not_a_server_error", "--max-examples",
                "30", "--phases", "examples,fuzzing", "--seed", "1", "--header", "Authorization: Bearer \(token)",
            ],
            timeout: .seconds(180))
        #expect(result.status == 0 && result.output.contains("passed"), "\(result.output)")
        #expect(!broker.log.contains("Fatal error"))
        #expect(try await broker.stop() == 0)
    }
}
