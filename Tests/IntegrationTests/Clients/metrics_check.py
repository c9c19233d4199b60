"""GET /metrics read by prometheus_client's own parser, its counters checked against traffic sent
by paho-mqtt, and who may read it.

Usage: metrics_check.py open|token HTTP_PORT MQTT_PORT DATA_DIR
"""

import os
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
import requests
from prometheus_client.parser import text_string_to_metric_families

from flow_support import check, wait

MODE, HTTP, MQTT, DATA_DIR = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
URL = f"http://127.0.0.1:{HTTP}/metrics"


def scrape(headers=None):
    """Every sample as {(name, sorted labels): value}, through the real parser."""
    response = requests.get(URL, headers=headers, timeout=10)
    check(response.status_code == 200, "GET /metrics is 200", response.text)
    check(response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), "Prometheus text format")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def connect(client_id, clean, on_message=None):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                         protocol=mqtt.MQTTv311)
    # Set before CONNECT: a returning session's queued messages follow CONNACK at once.
    client.on_message = on_message
    client.connect("127.0.0.1", MQTT)
    client.loop_start()
    check(wait(lambda: client.is_connected(), 10), f"{client_id} connected")
    return client


if MODE == "token":
    refused = requests.get(URL, timeout=10)
    check(refused.status_code == 401 and refused.headers.get("WWW-Authenticate", "").startswith("Bearer"),
          "without a token, 401 with a Bearer challenge", refused.text)
    check(refused.json().get("status") == 401, "an RFC 9457 problem body", refused.text)
    with open(os.path.join(DATA_DIR, "admin.token")) as file:
        token = file.read().strip()
    refusal = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv311)
    refusal.username_pw_set("nobody", "wrong")
    try:
        refusal.connect("127.0.0.1", MQTT)
        refusal.loop(timeout=2)
    except Exception:
        pass
    authorized = {"Authorization": f"Bearer {token}"}
    check(value(scrape(authorized), "gatehouse_acl_rules") > 0, "with the admin token, the metrics")
    # The refusal is counted once the password check (scrypt) has run, which on a loaded machine
    # can outlast the client's 2 s loop.
    refused = lambda: value(scrape(authorized), "gatehouse_connects_total", method="password", result="refused")
    check(wait(lambda: refused() == 1, 20), "the wrong password is counted as a refusal of the password method",
          refused())
    print("done")
    sys.exit(0)

before = scrape()
check(value(before, "gatehouse_process_resident_memory_bytes") > 1_000_000, "resident memory is reported")
check(value(before, "gatehouse_process_open_fds") > 3, "open file descriptors are reported")
check(value(before, "gatehouse_acl_rules") > 0, "the loaded ACL's rule count")

received = []
subscriber = connect("metrics-sub", clean=False)
subscriber.on_message = lambda client, userdata, message: received.append(message.payload)
subscriber.subscribe("metrics/#", qos=1)
publisher = connect("metrics-pub", clean=True)
for index in range(20):
    publisher.publish("metrics/t", b"0123456789", qos=1).wait_for_publish(10)
check(wait(lambda: len(received) == 20, 10), "the subscriber got 20 messages")

during = scrape()
check(value(during, "gatehouse_connections_count") == 2, "2 connections", value(during, "gatehouse_connections_count"))
check(value(during, "gatehouse_sessions_count", state="connected") == 2, "2 connected sessions")
check(value(during, "gatehouse_connections_by_protocol", protocol="3.1.1") == 2, "both speak 3.1.1")
check(value(during, "gatehouse_connects_total", method="anonymous", result="accepted")
      - value(before, "gatehouse_connects_total", method="anonymous", result="accepted") == 2,
      "two CONNECTs accepted by the anonymous method")
check(value(during, "gatehouse_subscriptions_count") == 1, "1 subscription")
check(value(during, "gatehouse_connections_by_listener", listener=f"mqtt://127.0.0.1:{MQTT}") == 2,
      "both on the mqtt:// listener")
for name, expected in [("gatehouse_messages_received_total", 20), ("gatehouse_messages_sent_total", 20)]:
    increase = value(during, name) - value(before, name)
    check(increase == expected, f"{name} rose by {expected}", increase)
# Bytes on the wire, packet by packet (3.1.1): in, 2 CONNECTs of 25 bytes, a SUBSCRIBE of 16,
# 20 PUBLISHes of 25 (2 + topic 2+9 + packet id 2 + payload 10) and the subscriber's 20 PUBACKs
# of 4; out, 2 CONNACKs of 4, a SUBACK of 5, 20 PUBLISHes of 25 and the publisher's 20 PUBACKs.
for name, expected in [("gatehouse_bytes_received_total", 2 * 25 + 16 + 20 * 25 + 20 * 4),
                       ("gatehouse_bytes_sent_total", 2 * 4 + 5 + 20 * 25 + 20 * 4)]:
    check(wait(lambda: value(scrape(), name) - value(before, name) == expected, 5),
          f"{name} rose by {expected}", value(scrape(), name) - value(before, name))
# The subscriber's last PUBACKs may still be on their way when its callback has run.
check(wait(lambda: value(scrape(), "gatehouse_queued_bytes") == 0, 5),
      "every acknowledged message left the memory budget's count", value(scrape(), "gatehouse_queued_bytes"))
check(value(during, "gatehouse_persistence_commit_seconds_count") > 0, "commits are timed in a histogram")
check(value(during, "gatehouse_persistence_commit_seconds_bucket", le="+Inf")
      == value(during, "gatehouse_persistence_commit_seconds_count"), "the histogram's +Inf bucket holds every commit")

subscriber.disconnect()
subscriber.loop_stop()
check(wait(lambda: value(scrape(), "gatehouse_sessions_count", state="offline") == 1, 5),
      "the persistent subscriber's session counts as offline")

# Drops by reason: a topic nobody subscribed to, a topic the ACL refuses (anonymous clients may
# not publish under $SYS), and a message that expires while its persistent session is away.
publisher.publish("metrics/t", b"while away", qos=1).wait_for_publish(10)  # queued: not a drop
publisher.publish("nobody/listens", b"x", qos=1).wait_for_publish(10)
publisher.publish("$SYS/forged", b"x", qos=1).wait_for_publish(10)
publisher.disconnect()
v5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="metrics-v5pub", protocol=mqtt.MQTTv5)
v5.connect("127.0.0.1", MQTT)
v5.loop_start()
check(wait(lambda: v5.is_connected(), 10), "the 5.0 publisher connected")
expiring = Properties(PacketTypes.PUBLISH)
expiring.MessageExpiryInterval = 1
v5.publish("metrics/t", b"expires", qos=1, properties=expiring).wait_for_publish(10)
time.sleep(2.2)
returned = []
subscriber = connect("metrics-sub", clean=False,
                     on_message=lambda client, userdata, message: returned.append(message.payload))
check(wait(lambda: returned == [b"while away"], 5), "the returning subscriber got only the unexpired message", returned)
for reason in ["no_subscribers", "acl_refused", "expired"]:
    check(wait(lambda: value(scrape(), "gatehouse_messages_dropped_total", reason=reason) == 1, 5),
          f"one drop counted as {reason}", value(scrape(), "gatehouse_messages_dropped_total", reason=reason))
check(value(scrape(), "gatehouse_messages_dropped_total", reason="queue_full") == 0, "no queue was full")
subscriber.disconnect()
v5.disconnect()
print("done")
