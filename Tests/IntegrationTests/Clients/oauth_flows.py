"""OAuth2 flows against a running Gatehouse, as an agent would drive them: requests for HTTP,
joserfc for keys and assertions, paho-mqtt and mosquitto_sub for the MQTT side.

Usage: oauth_flows.py SCENARIO HTTP_PORT MQTT_PORT DATA_DIR [JWKS_CERT JWKS_KEY]
Prints one 'ok: …' line per check and exits non-zero at the first failed one.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import ssl
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import requests
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from flow_support import Subscriber, check, gatehouse_iam

SCENARIO, HTTP_PORT, MQTT_PORT, DATA_DIR = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
BASE = f"http://127.0.0.1:{HTTP_PORT}"
TOKEN_URL = BASE + "/oauth/token"
BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def iam(*arguments):
    return gatehouse_iam(DATA_DIR, *arguments)


def new_key(kid):
    return ECKey.generate_key("P-256", parameters={"kid": kid}, private=True)


def jwks(*keys):
    return json.dumps({"keys": [key.as_dict(private=False) for key in keys]})


def assertion(key, issuer, subject=None, audience=TOKEN_URL, lifetime=300, **overrides):
    moment = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject or issuer,
        "aud": audience,
        "iat": moment,
        "exp": moment + lifetime,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(data, auth=None):
    return requests.post(TOKEN_URL, data=data, auth=auth, timeout=10)


def refused(response, error, status, what):
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    check(
        response.status_code == status and body.get("error") == error,
        f"{what}: {status} {error}",
        f"got {response.status_code} {response.text}",
    )
    if status == 401:
        check("WWW-Authenticate" in response.headers, f"{what}: 401 carries WWW-Authenticate")


def mqtt_publish(username, password, topic="t/oauth"):
    """Connects with the access token as the MQTT password and publishes at QoS 1."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{username}-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.connect("127.0.0.1", MQTT_PORT)
    client.loop_start()
    deadline = time.time() + 5
    while not client.is_connected() and time.time() < deadline:
        time.sleep(0.02)
    connected = client.is_connected()
    published = False
    if connected:
        info = client.publish(topic, b"hello", qos=1)
        info.wait_for_publish(5)
        published = info.is_published()
    client.disconnect()
    client.loop_stop()
    return connected and published


def setup_identity(name, kind="application", roles=("device",)):
    if "acme" not in iam("tenant", "list"):
        iam("tenant", "add", "acme")
    role_flags = [flag for role in roles for flag in ("--role", role)]
    iam("identity", "add", name, "--tenant", "acme", "--kind", kind, *role_flags)


def grants_and_refusals():
    # A client secret, by Basic and in the body; the token is an MQTT password.
    setup_identity("svc-secret", roles=("device", "reader"))
    secret = iam("client", "create", "svc-secret", "--grant", "client_credentials", "--secret")
    response = token({"grant_type": "client_credentials"}, auth=("svc-secret", secret))
    check(response.status_code == 200, "client_credentials with Basic", response.text)
    body = response.json()
    check(body["token_type"] == "Bearer" and body["expires_in"] == 900, "Bearer token, 15 minutes")
    check("refresh_token" not in body, "no refresh token with client_credentials (RFC 6749 §4.4.3)")
    check(response.headers.get("Cache-Control") == "no-store", "token response is Cache-Control: no-store")
    check(mqtt_publish("svc-secret", body["access_token"]), "access token from a secret publishes over MQTT")
    post = token({"grant_type": "client_credentials", "client_id": "svc-secret", "client_secret": secret,
                  "scope": "reader"})
    check(post.status_code == 200 and post.json()["scope"] == "reader", "client_secret_post with a held scope")

    # The discovery document and the JWKS alone let a standard client verify an issued token.
    metadata = requests.get(BASE + "/.well-known/oauth-authorization-server", timeout=10).json()
    check(metadata["token_endpoint"] == TOKEN_URL, "RFC 8414 metadata names the token endpoint")
    openid = requests.get(BASE + "/.well-known/openid-configuration", timeout=10).json()
    check(openid["jwks_uri"] == metadata["jwks_uri"], "openid-configuration is an alias")
    published = KeySet.import_key_set(requests.get(metadata["jwks_uri"], timeout=10).json())
    decoded = jwt.decode(body["access_token"], published)
    check(decoded.claims["sub"] == "svc-secret" and decoded.claims["client_id"] == "svc-secret",
          "joserfc verifies an issued token from the served JWKS")
    check(decoded.claims["iss"] == metadata["issuer"], "the token's iss is the metadata's issuer")

    # private_key_jwt client credentials.
    setup_identity("svc-keyed")
    keyed = new_key("keyed-1")
    iam("client", "create", "svc-keyed", "--grant", "client_credentials", "--jwks", jwks(keyed))
    response = token({"grant_type": "client_credentials", "client_assertion_type": CLIENT_ASSERTION,
                      "client_assertion": assertion(keyed, "svc-keyed")})
    check(response.status_code == 200, "client_credentials with private_key_jwt", response.text)
    check(mqtt_publish("svc-keyed", response.json()["access_token"]), "private_key_jwt token publishes over MQTT")

    # JWT-bearer: an agent with only its own key pair reaches a publishing MQTT session.
    setup_identity("agent-1", kind="device")
    agent = new_key("agent-k1")
    iam("client", "create", "agent-1", "--grant", "jwt-bearer", "--jwks", jwks(agent))
    response = token({"grant_type": BEARER, "assertion": assertion(agent, "agent-1")})
    check(response.status_code == 200, "jwt-bearer grant", response.text)
    check(mqtt_publish("agent-1", response.json()["access_token"]), "jwt-bearer token publishes over MQTT")

    # Each refusal with its RFC 6749 code and status.
    replayed = assertion(agent, "agent-1")
    check(token({"grant_type": BEARER, "assertion": replayed}).status_code == 200, "first use of a jti")
    refused(token({"grant_type": BEARER, "assertion": replayed}), "invalid_grant", 400, "replayed jti")
    moment = int(time.time())
    refused(token({"grant_type": BEARER, "assertion": assertion(agent, "agent-1", iat=moment - 600,
                                                                 exp=moment - 120)}),
            "invalid_grant", 400, "expired assertion")
    refused(token({"grant_type": BEARER, "assertion": assertion(agent, "agent-1", lifetime=3600)}),
            "invalid_grant", 400, "assertion living longer than 10 minutes")
    refused(token({"grant_type": BEARER, "assertion": assertion(agent, "agent-1", audience="https://elsewhere")}),
            "invalid_grant", 400, "wrong aud")
    refused(token({"grant_type": BEARER, "assertion": assertion(agent, "agent-1", iat=None)}),
            "invalid_grant", 400, "no iat")
    stranger = new_key("not-registered")
    refused(token({"grant_type": BEARER, "assertion": assertion(stranger, "agent-1")}),
            "invalid_grant", 400, "unknown kid")
    header, payload, signature = assertion(agent, "agent-1").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "svc-secret"
    tampered = ".".join([header, b64(json.dumps(claims).encode()), signature])
    refused(token({"grant_type": BEARER, "assertion": tampered}), "invalid_grant", 400, "tampered assertion")
    fresh = {"iss": "agent-1", "sub": "agent-1", "aud": TOKEN_URL, "iat": moment, "exp": moment + 60,
             "jti": str(uuid.uuid4())}
    unsigned = b64(json.dumps({"alg": "none", "kid": "agent-k1"}).encode()) + "." + b64(json.dumps(fresh).encode()) + "."
    refused(token({"grant_type": BEARER, "assertion": unsigned}), "invalid_grant", 400, "alg none")
    public_json = json.dumps(agent.as_dict(private=False)).encode()
    signing_input = (b64(json.dumps({"alg": "HS256", "kid": "agent-k1"}).encode()) + "."
                     + b64(json.dumps(dict(fresh, jti=str(uuid.uuid4()))).encode()))
    forged = signing_input + "." + b64(hmac.new(public_json, signing_input.encode(), hashlib.sha256).digest())
    refused(token({"grant_type": BEARER, "assertion": forged}), "invalid_grant", 400, "HS256 keyed with the public key")
    refused(token({"grant_type": "client_credentials"}, auth=("nobody", "x" * 20)), "invalid_client", 401,
            "unknown client")
    refused(token({"grant_type": "client_credentials"}, auth=("svc-secret", "wrong")), "invalid_client", 401,
            "wrong secret")
    refused(token({"grant_type": "client_credentials", "scope": "admin"}, auth=("svc-secret", secret)),
            "invalid_scope", 400, "scope not held")
    refused(token({"grant_type": BEARER, "assertion": assertion(keyed, "svc-keyed")}), "unauthorized_client", 400,
            "grant not allowed")
    refused(token({"grant_type": "password"}, auth=("svc-secret", secret)), "unsupported_grant_type", 400,
            "unknown grant type")
    refused(token({"scope": "device"}), "invalid_request", 400, "no grant_type")
    broken = requests.post(TOKEN_URL, data="grant_type=%zz&scope=%", timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    refused(broken, "invalid_request", 400, "invalid percent-encoding")
    duplicated = requests.post(TOKEN_URL, data="grant_type=client_credentials&grant_type=refresh_token", timeout=10,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    refused(duplicated, "invalid_request", 400, "a parameter given twice")
    huge = requests.post(TOKEN_URL, data={"grant_type": "client_credentials", "scope": "x" * 70_000}, timeout=10)
    refused(huge, "invalid_request", 400, "a body over the size limit")

    # A trusted assertion issuer (a factory's signing service) asserts the devices it may.
    factory = new_key("factory-1")
    iam("assertion-issuer", "add", "factory", "--jwks", jwks(factory), "--subjects", "plant-*", "--tenant", "acme")
    setup_identity("plant-7", kind="device")
    setup_identity("office-1", kind="device")
    asserted = token({"grant_type": BEARER, "assertion": assertion(factory, "factory", subject="plant-7")})
    check(asserted.status_code == 200 and mqtt_publish("plant-7", asserted.json()["access_token"]),
          "a trusted issuer's assertion for a subject it may assert publishes over MQTT", asserted.text)
    refused(token({"grant_type": BEARER, "assertion": assertion(factory, "factory", subject="office-1")}),
            "invalid_grant", 400, "a subject outside the issuer's pattern")
    refused(token({"grant_type": BEARER, "assertion": assertion(factory, "unknown-issuer", subject="plant-7")}),
            "invalid_grant", 400, "an unknown issuer")
    check("plant-*" in iam("assertion-issuer", "list"), "iam assertion-issuer list")

    # The client CLI: rotate the secret, change keys, disable.
    rotated = iam("client", "rotate-secret", "svc-secret")
    refused(token({"grant_type": "client_credentials"}, auth=("svc-secret", secret)), "invalid_client", 401,
            "the secret before rotation")
    check(token({"grant_type": "client_credentials"}, auth=("svc-secret", rotated)).status_code == 200,
          "the rotated secret works")
    secret = rotated
    second = new_key("keyed-2")
    iam("client", "add-key", "svc-keyed", json.dumps(second.as_dict(private=False)))
    iam("client", "remove-key", "svc-keyed", "keyed-1")
    check(token({"grant_type": "client_credentials", "client_assertion_type": CLIENT_ASSERTION,
                 "client_assertion": assertion(second, "svc-keyed")}).status_code == 200, "an added key works")
    refused(token({"grant_type": "client_credentials", "client_assertion_type": CLIENT_ASSERTION,
                   "client_assertion": assertion(keyed, "svc-keyed")}), "invalid_client", 401, "a removed key")
    shown = iam("client", "show", "svc-keyed")
    check("keyed-2" in shown and "keyed-1" not in shown, "iam client show lists the keys", shown)
    iam("client", "disable", "svc-keyed")
    refused(token({"grant_type": "client_credentials", "client_assertion_type": CLIENT_ASSERTION,
                   "client_assertion": assertion(second, "svc-keyed")}), "invalid_client", 401, "a disabled client")
    check("disabled" in iam("client", "list"), "iam client list shows it disabled")
    audit = iam("audit")
    check("client.rotate-secret" in audit and "client.disable" in audit, "client changes are audited")

    # Introspection needs authentication; revocation ends the token.
    access = token({"grant_type": "client_credentials"}, auth=("svc-secret", secret)).json()["access_token"]
    unauthenticated = requests.post(BASE + "/oauth/introspect", data={"token": access}, timeout=10)
    check(unauthenticated.status_code == 401, "introspection without authentication is refused")
    admin = open(os.path.join(DATA_DIR, "admin.token")).read().strip()
    introspected = requests.post(BASE + "/oauth/introspect", data={"token": access},
                                 headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()
    check(introspected["active"] and introspected["client_id"] == "svc-secret", "introspection: active", introspected)
    by_client = requests.post(BASE + "/oauth/introspect", data={"token": access}, auth=("svc-secret", secret),
                              timeout=10).json()
    check(by_client["active"], "a client introspects its own token")
    revoked = requests.post(BASE + "/oauth/revoke", data={"token": access}, auth=("svc-secret", secret), timeout=10)
    check(revoked.status_code == 200, "revocation answers 200")
    again = requests.post(BASE + "/oauth/introspect", data={"token": access},
                          headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()
    check(again == {"active": False}, "a revoked token introspects as active: false", again)
    check(not mqtt_publish("svc-secret", access), "a revoked access token cannot connect")
    unknown = requests.post(BASE + "/oauth/revoke", data={"token": "not-a-token"}, timeout=10)
    check(unknown.status_code == 200, "revoking an unknown token is 200 too (RFC 7009)")

    # One client id in a retry loop is slowed down (20/s, bursts of 40); others are not.
    with requests.Session() as session:
        statuses = [session.post(TOKEN_URL, data={"grant_type": "client_credentials"}, auth=("flood", "x"),
                                 timeout=10) for _ in range(60)]
    limited = [response for response in statuses if response.status_code == 429]
    check(limited and limited[0].headers.get("Retry-After") == "1"
          and limited[0].json()["error"] == "temporarily_unavailable", "a flooding client id gets 429 with Retry-After")
    check(token({"grant_type": "client_credentials"}, auth=("svc-secret", secret)).status_code == 200,
          "another client is not slowed down")


class KeyServer(http.server.BaseHTTPRequestHandler):
    document = "{}"

    def do_GET(self):
        body = KeyServer.document.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *arguments):
        pass


def rotation(certificate, key_file):
    """The client serves its JWKS over HTTPS and rotates keys without any admin step."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeyServer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"https://127.0.0.1:{server.server_address[1]}/jwks.json"
    first, second = new_key("rot-1"), new_key("rot-2")
    KeyServer.document = jwks(first)
    setup_identity("rotating", kind="device")
    iam("client", "create", "rotating", "--grant", "jwt-bearer", "--jwks-uri", uri)
    response = token({"grant_type": BEARER, "assertion": assertion(first, "rotating")})
    check(response.status_code == 200, "jwt-bearer with a key from the client's jwks_uri", response.text)
    metadata = requests.get(BASE + "/.well-known/oauth-authorization-server", timeout=10).json()
    claims = json.loads(base64.urlsafe_b64decode(response.json()["access_token"].split(".")[1] + "=="))
    check(metadata["issuer"] == "https://auth.test" and claims["iss"] == "https://auth.test",
          "a configured issuer URL is the tokens' iss and the metadata's issuer", metadata)
    check(mqtt_publish("rotating", response.json()["access_token"]), "its token publishes over MQTT")
    KeyServer.document = jwks(first, second)
    time.sleep(1.1)  # unknown kids are fetched again at most once a second
    response = token({"grant_type": BEARER, "assertion": assertion(second, "rotating")})
    check(response.status_code == 200, "a new kid works at once, without an admin step", response.text)
    KeyServer.document = jwks(second)
    time.sleep(2.5)  # the test broker caches a JWKS for 2 s
    refused(token({"grant_type": BEARER, "assertion": assertion(first, "rotating")}), "invalid_grant", 400,
            "the removed key is refused after the cache refresh")
    check(token({"grant_type": BEARER, "assertion": assertion(second, "rotating")}).status_code == 200,
          "the remaining key still works")
    server.shutdown()


def refresh():
    """Rotation on every use, the retry window, and reuse after it revoking the whole family."""
    setup_identity("device-r", kind="device")
    key = new_key("dev-r")
    iam("client", "create", "device-r", "--grant", "jwt-bearer", "--grant", "refresh_token", "--jwks", jwks(key))
    first = token({"grant_type": BEARER, "assertion": assertion(key, "device-r")}).json()
    check("refresh_token" in first, "the jwt-bearer grant issues a refresh token to a client allowed one")
    second = token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    check(second.status_code == 200, "refresh_token grant", second.text)
    second = second.json()
    check(second["refresh_token"] != first["refresh_token"], "the refresh token rotates on use")
    retry = token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}).json()
    check(retry.get("refresh_token") == second["refresh_token"], "a retry within the window gets the same successor",
          retry)
    refused(token({"grant_type": "refresh_token", "refresh_token": "ghr_" + "x" * 43}), "invalid_grant", 400,
            "unknown refresh token")
    subscriber = Subscriber("-p", str(MQTT_PORT), "-V", "mqttv5", "-u", "device-r", "-P", second["access_token"],
                            "-t", "t")
    check(subscriber.wait_for("SUBACK"), "mosquitto_sub subscribed with a family's access token", subscriber.lines)
    time.sleep(2.5)  # past the test broker's 1 s retry window (times are whole seconds)
    reused_at = time.time()
    refused(token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}), "invalid_grant", 400,
            "reuse after the retry window")
    ended = subscriber.wait_for("DISCONNECT (152)", 3)
    elapsed = time.time() - reused_at
    check(ended and elapsed < 1.5, f"the live mosquitto_sub got DISCONNECT 0x98 within {elapsed:.2f} s",
          subscriber.lines)
    subscriber.kill()
    refused(token({"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}), "invalid_grant", 400,
            "the family's newest refresh token is revoked too")
    check(not mqtt_publish("device-r", second["access_token"]), "the family's access token cannot connect")

    # RFC 7009: revoking a refresh token revokes the access tokens of its family and ends their sessions.
    third = token({"grant_type": BEARER, "assertion": assertion(key, "device-r")}).json()
    live = Subscriber("-p", str(MQTT_PORT), "-V", "mqttv5", "-u", "device-r", "-P", third["access_token"], "-t", "t")
    check(live.wait_for("SUBACK"), "mosquitto_sub subscribed with the new family's access token", live.lines)
    revoked_at = time.time()
    requests.post(BASE + "/oauth/revoke", data={"token": third["refresh_token"]}, timeout=10)
    check(live.wait_for("DISCONNECT (152)", 3) and time.time() - revoked_at < 1.0,
          "POST /oauth/revoke of a refresh token ends its access tokens' live sessions within a second", live.lines)
    live.kill()
    check(not mqtt_publish("device-r", third["access_token"]), "revoking a refresh token revokes its access tokens")


def address_limit():
    """5 requests a second from one address (bursts of 10), each naming another client id."""
    statuses = [token({"grant_type": "client_credentials"}, auth=(f"client-{index}", "x")).status_code
                for index in range(30)]
    check(statuses.count(429) >= 10 and statuses[0] == 401, "one address past its limit gets 429", statuses)
    time.sleep(1.2)
    check(token({"grant_type": "client_credentials"}, auth=("client-x", "x")).status_code == 401,
          "after a second the address is served again")


if SCENARIO == "grants":
    grants_and_refusals()
elif SCENARIO == "rotation":
    rotation(sys.argv[5], sys.argv[6])
elif SCENARIO == "refresh":
    refresh()
elif SCENARIO == "address-limit":
    address_limit()
print("done", flush=True)
