"""Applications, tenant subscriptions and service users (seed 000), and the SCIM-style admin
API, against a running Gatehouse: requests for HTTP, paho-mqtt and mosquitto_sub for MQTT.

Usage: applications_flow.py HTTP_PORT MQTT_PORT DATA_DIR
Prints one 'ok: …' line per check and exits non-zero at the first failed one.
"""

import os
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
import requests

from flow_support import GATEHOUSE, Subscriber, check, gatehouse_iam, wait

HTTP_PORT, MQTT_PORT, DATA_DIR = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
BASE = f"http://127.0.0.1:{HTTP_PORT}"
ADMIN = {"Authorization": "Bearer " + open(os.path.join(DATA_DIR, "admin.token")).read().strip()}


def iam(*arguments):
    return gatehouse_iam(DATA_DIR, *arguments)


class Session:
    """A paho MQTT 5 session that records SUBACK and PUBACK reason codes."""

    def __init__(self, username, password):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"s-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.acks, self.grants, self.messages, self.refused = {}, {}, [], None
        self.client.on_publish = lambda c, u, mid, reason, p: self.acks.__setitem__(mid, reason)
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self.grants.__setitem__(mid, reasons)
        self.client.on_message = lambda c, u, message: self.messages.append((message.topic, message.payload))
        self.client.on_connect = lambda c, u, flags, reason, p: setattr(self, "refused", reason.is_failure)
        self.client.connect("127.0.0.1", MQTT_PORT)
        self.client.loop_start()
        wait(lambda: self.refused is not None, 5)

    @property
    def connected(self):
        return self.refused is False and self.client.is_connected()

    def publish(self, topic):
        info = self.client.publish(topic, b"m", qos=1)
        wait(lambda: info.mid in self.acks, 5)
        reason = self.acks.get(info.mid)
        return reason is not None and not reason.is_failure

    def subscribe(self, topic):
        _, mid = self.client.subscribe(topic, qos=1)
        wait(lambda: mid in self.grants, 5)
        return all(not reason.is_failure for reason in self.grants.get(mid, []))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def mosquitto_sub(username, password, topic):
    subscriber = Subscriber("-p", str(MQTT_PORT), "-V", "mqttv5", "-u", username, "-P", password, "-t", topic)
    check(subscriber.wait_for("SUBACK"), f"mosquitto_sub for {username} subscribed", subscriber.lines)
    return subscriber


for tenant in ("provider", "tenant-a", "tenant-b"):
    iam("tenant", "add", tenant)

# Registering needs an admin token; the bootstrap credentials are shown once.
check(requests.get(BASE + "/applications", timeout=10).status_code == 401, "the admin API needs a token")
iam("identity", "add", "plain-device", "--tenant", "tenant-a", "--kind", "device", "--role", "device")
device_token = iam("token", "create", "plain-device")
forbidden = requests.get(BASE + "/applications", headers={"Authorization": f"Bearer {device_token}"}, timeout=10)
check(forbidden.status_code == 403 and forbidden.headers["content-type"] == "application/problem+json",
      "a non-admin token gets a 403 problem", forbidden.text)
created = requests.post(BASE + "/applications", headers=ADMIN, timeout=10,
                        json={"name": "analytics", "tenant": "provider", "requiredRoles": ["analytics-reader"]})
check(created.status_code == 201, "POST /applications registers an application", created.text)
bootstrap = (created.json()["bootstrap"]["username"], created.json()["bootstrap"]["password"])
again = requests.post(BASE + "/applications", headers=ADMIN, timeout=10,
                      json={"name": "analytics", "tenant": "provider", "requiredRoles": []})
check(again.status_code == 409, "registering it twice is a 409")

# Two tenants subscribe; re-subscribing is a 409, unknown names 404.
for tenant in ("tenant-a", "tenant-b"):
    subscribed = requests.post(BASE + "/applications/analytics/subscriptions", headers=ADMIN, json={"tenant": tenant},
                               timeout=10)
    check(subscribed.status_code == 201, f"{tenant} subscribes", subscribed.text)
check(requests.post(BASE + "/applications/analytics/subscriptions", headers=ADMIN, json={"tenant": "tenant-a"},
                    timeout=10).status_code == 409, "re-subscribing is a 409")
check(requests.post(BASE + "/applications/nope/subscriptions", headers=ADMIN, json={"tenant": "tenant-a"},
                    timeout=10).status_code == 404, "an unknown application is a 404")
check(requests.post(BASE + "/applications/analytics/subscriptions", headers=ADMIN, json={"tenant": "nowhere"},
                    timeout=10).status_code == 404, "an unknown tenant is a 404")
users = requests.get(BASE + "/scim/v2/Users", headers=ADMIN, timeout=10,
                     params={"filter": 'userName eq "service_analytics@tenant-a"'}).json()["Resources"]
extension = users[0]["urn:gatehouse:params:scim:schemas:extension:2.0:Identity"]
check(extension["roles"] == ["analytics-reader"] and extension["kind"] == "service" and extension["tenant"] == "tenant-a",
      "the service user holds exactly the required roles, in its tenant", users)

# The bootstrap credentials fetch both service users, in Cumulocity's shape.
wrong = requests.get(BASE + "/application/currentApplication/subscriptions", auth=(bootstrap[0], "nope"), timeout=10)
check(wrong.status_code == 401, "wrong bootstrap credentials are refused")
fetched = requests.get(BASE + "/application/currentApplication/subscriptions", auth=bootstrap, timeout=10)
check(fetched.status_code == 200, "bootstrap credentials fetch the subscriptions", fetched.text)
service = {user["tenant"]: user for user in fetched.json()["users"]}
check(set(service) == {"tenant-a", "tenant-b"} and all(user["password"] for user in service.values()),
      "one {tenant, name, password} per subscribed tenant")

# Nothing else is reachable with the bootstrap credentials.
check(requests.get(BASE + "/applications", auth=bootstrap, timeout=10).status_code == 401,
      "bootstrap credentials do not reach the admin API")
check(requests.post(BASE + "/oauth/token", auth=bootstrap, data={"grant_type": "client_credentials"},
                    timeout=10).status_code == 401, "bootstrap credentials do not reach the token endpoint")
# The refusal may wait out the back-off the refusals above earned, and a loaded CI machine's scrypt.
bootstrap_mqtt = subprocess.run(["mosquitto_pub", "-p", str(MQTT_PORT), "-u", bootstrap[0], "-P", bootstrap[1], "-t",
                                 "tenants/provider/x", "-m", "m"], capture_output=True, text=True, timeout=40)
check(bootstrap_mqtt.returncode != 0, "bootstrap credentials cannot connect over MQTT", bootstrap_mqtt.stdout)

# Each service user publishes in its own tenant only.
a = Session(service["tenant-a"]["name"], service["tenant-a"]["password"])
b = Session(service["tenant-b"]["name"], service["tenant-b"]["password"])
check(a.connected and b.connected, "both service users connect with their passwords")
check(a.subscribe("tenants/tenant-a/measurements/#"), "tenant A's service user reads its tenant")
check(a.publish("tenants/tenant-a/measurements/t"), "tenant A's service user writes its tenant")
check(wait(lambda: len(a.messages) == 1, 5), "and receives it")
check(not b.publish("tenants/tenant-a/measurements/t"), "tenant B's service user cannot write tenant A's topics")
check(not b.subscribe("tenants/tenant-a/#"), "tenant B's service user cannot read tenant A's topics")
time.sleep(0.3)
check(len(a.messages) == 1, "nothing of B's reached tenant A")
a.close()
b.close()

# Unsubscribing tenant A ends its live session within a second; tenant B's keeps running.
sub_a = mosquitto_sub(service["tenant-a"]["name"], service["tenant-a"]["password"], "tenants/tenant-a/#")
sub_b = mosquitto_sub(service["tenant-b"]["name"], service["tenant-b"]["password"], "tenants/tenant-b/#")
started = time.time()
removed = requests.delete(BASE + "/applications/analytics/subscriptions/tenant-a", headers=ADMIN, timeout=10)
check(removed.status_code == 204, "DELETE …/subscriptions/tenant-a", removed.text)
check(sub_a.wait_for("DISCONNECT (152)", 3) and time.time() - started < 1.0,
      f"tenant A's mosquitto_sub got DISCONNECT 0x98 after {time.time() - started:.2f} s", sub_a.lines)
publisher = Session(service["tenant-b"]["name"], service["tenant-b"]["password"])
check(publisher.publish("tenants/tenant-b/alive"), "tenant B's service user still publishes")
check(sub_b.wait_for("tenants/tenant-b/alive", 3) and sub_b.process.poll() is None,
      "tenant B's mosquitto_sub keeps running and receives it", sub_b.lines)
publisher.close()
gone = requests.get(BASE + "/scim/v2/Users", headers=ADMIN, timeout=10,
                    params={"filter": 'userName eq "service_analytics@tenant-a"'}).json()
check(gone["totalResults"] == 0, "tenant A's service user is deleted")
check(len(requests.get(BASE + "/application/currentApplication/subscriptions", auth=bootstrap,
                       timeout=10).json()["users"]) == 1, "the bootstrap credentials now see one tenant")

# The bootstrap secret rotates: the old one stops working at once.
rotated = requests.post(BASE + "/applications/analytics/bootstrap-secret", headers=ADMIN, timeout=10).json()
check(requests.get(BASE + "/application/currentApplication/subscriptions", auth=bootstrap,
                   timeout=10).status_code == 401, "the bootstrap secret before rotation is refused")
bootstrap = (rotated["username"], rotated["password"])
check(requests.get(BASE + "/application/currentApplication/subscriptions", auth=bootstrap,
                   timeout=10).status_code == 200, "the rotated bootstrap secret works")

# Changing the required roles changes the service users'; disabling the application disables them.
changed = requests.patch(BASE + "/applications/analytics", headers=ADMIN, json={"requiredRoles": ["other"]},
                         timeout=10)
check(changed.status_code == 200 and changed.json()["requiredRoles"] == ["other"], "PATCH requiredRoles")
check(sub_b.wait_for("DISCONNECT (152)", 3), "a service user that lost its role is disconnected", sub_b.lines)
roles = requests.get(BASE + "/scim/v2/Users", headers=ADMIN, timeout=10,
                     params={"filter": 'userName eq "service_analytics@tenant-b"'}).json()["Resources"][0]
check(roles["urn:gatehouse:params:scim:schemas:extension:2.0:Identity"]["roles"] == ["other"],
      "the service user's roles follow the application's")
requests.patch(BASE + "/applications/analytics", headers=ADMIN, json={"enabled": False}, timeout=10)
check(requests.get(BASE + "/application/currentApplication/subscriptions", auth=bootstrap,
                   timeout=10).status_code == 401, "a disabled application's bootstrap credentials are refused")
disabled = requests.get(BASE + "/scim/v2/Users", headers=ADMIN, timeout=10,
                        params={"filter": 'userName eq "service_analytics@tenant-b"'}).json()["Resources"][0]
check(disabled["active"] is False, "disabling the application disables its service users")
for process in (sub_a, sub_b):
    process.kill()

# The CLI calls the same IAM functions.
printed = iam("application", "create", "firmware", "--tenant", "provider", "--role", "firmware-manager")
check(printed.startswith("servicebootstrap_firmware:ghb_"), "iam application create prints the bootstrap credentials")
check(iam("application", "subscribe", "firmware", "tenant-b") == "service_firmware@tenant-b",
      "iam application subscribe prints the service user")
listed = requests.get(BASE + "/applications/firmware", headers=ADMIN, timeout=10).json()
check(listed["subscriptions"][0]["tenant"] == "tenant-b", "the API sees what the CLI did")
failed = subprocess.run([GATEHOUSE, "iam", "application", "subscribe", "firmware", "tenant-b", "--data-dir", DATA_DIR],
                        capture_output=True, text=True, timeout=30)
check(failed.returncode != 0 and "already subscribed" in failed.stderr, "re-subscribing in the CLI exits non-zero")

# SCIM: paging, create, patch, delete, groups; tokens.
page = requests.get(BASE + "/scim/v2/Users", headers=ADMIN, params={"startIndex": 2, "count": 2}, timeout=10).json()
check(page["startIndex"] == 2 and page["itemsPerPage"] == 2 and page["totalResults"] > 2, "SCIM paging", page)
bad = requests.get(BASE + "/scim/v2/Users", headers=ADMIN, params={"filter": "title pr"}, timeout=10)
check(bad.status_code == 400 and bad.json().get("scimType") == "invalidFilter", "an unsupported filter is invalidFilter")
user = requests.post(BASE + "/scim/v2/Users", headers=ADMIN, timeout=10, json={
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "sensor-9",
    "urn:gatehouse:params:scim:schemas:extension:2.0:Identity": {"tenant": "tenant-b", "kind": "device",
                                                                 "roles": ["device"]}})
check(user.status_code == 201, "POST /scim/v2/Users", user.text)
check(requests.post(BASE + "/scim/v2/Users", headers=ADMIN, json=user.json(), timeout=10).status_code == 409,
      "a second user with that userName is a 409")
token = requests.post(BASE + "/tokens", headers=ADMIN, json={"identity": "sensor-9", "expiresIn": 3600}, timeout=10)
check(token.status_code == 201 and token.json()["token"].startswith("gth_"), "POST /tokens", token.text)
device = Session("sensor-9", token.json()["token"])
check(device.connected, "the API's token connects over MQTT")
device.close()
patched = requests.patch(BASE + f"/scim/v2/Users/{user.json()['id']}", headers=ADMIN, timeout=10, json={
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{"op": "replace", "path": "active", "value": False}]})
check(patched.status_code == 200 and patched.json()["active"] is False, "PATCH active: false", patched.text)
check(not Session("sensor-9", token.json()["token"]).connected, "a disabled identity cannot connect")
check(requests.delete(BASE + f"/scim/v2/Users/{user.json()['id']}", headers=ADMIN, timeout=10).status_code == 204,
      "DELETE /scim/v2/Users/{id}")
check(requests.get(BASE + f"/scim/v2/Users/{user.json()['id']}", headers=ADMIN, timeout=10).status_code == 404,
      "a deleted user is a 404")
group = requests.post(BASE + "/scim/v2/Groups", headers=ADMIN, timeout=10, json={
    "displayName": "operators", "urn:gatehouse:params:scim:schemas:extension:2.0:Identity": {
        "tenant": "tenant-b", "roles": ["operator"]}})
check(group.status_code == 201, "POST /scim/v2/Groups", group.text)
groups = requests.get(BASE + "/scim/v2/Groups", headers=ADMIN, params={"filter": 'displayName eq "operators"'},
                      timeout=10).json()
check(groups["totalResults"] == 1, "GET /scim/v2/Groups with a filter")
audit = iam("audit")
check("http:admin" in audit and "application.subscribe" in audit, "API changes are audited with the admin as actor")
print("done", flush=True)
