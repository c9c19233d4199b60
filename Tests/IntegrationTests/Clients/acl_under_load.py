"""Publishes QoS 1 messages without pause to an always-allowed topic and to one whose
permission the test keeps switching, while a subscriber of the same identity reads both.

Usage: acl_under_load.py PORT USERNAME TOKEN SECONDS
Prints "ok A=<n> B_accepted=<n> B_refused=<n>" when every message the broker acknowledged with
success was delivered exactly once and nothing it refused was; otherwise what differed, exit 1.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

PORT, USERNAME, TOKEN, SECONDS = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
TOPICS = {"a": "tenants/acme/a", "b": "tenants/acme/b"}
lock = threading.Lock()
received = {"a": [], "b": []}
acked = {}  # mid -> reason code
sent = {}  # mid -> (topic key, sequence)


def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.username_pw_set(USERNAME, TOKEN)
    c.max_inflight_messages_set(20)
    return c


def on_message(_c, _u, message):
    key = "a" if message.topic == TOPICS["a"] else "b"
    with lock:
        received[key].append(int(message.payload))


def on_publish(_c, _u, mid, reason, _properties):
    with lock:
        acked[mid] = reason.value


subscriber = client("load-sub")
subscriber.on_message = on_message
subscribed = threading.Event()
subscriber.on_subscribe = lambda *_: subscribed.set()
subscriber.connect("127.0.0.1", PORT)
subscriber.loop_start()
subscriber.subscribe("tenants/acme/#", qos=1)
if not subscribed.wait(5):
    print("FAILED: no SUBACK")
    sys.exit(1)

publisher = client("load-pub")
publisher.on_publish = on_publish
publisher.connect("127.0.0.1", PORT)
publisher.loop_start()
deadline = time.time() + SECONDS
sequence = 0
while time.time() < deadline:
    for key in ("a", "b"):
        info = publisher.publish(TOPICS[key], str(sequence), qos=1)
        with lock:
            sent[info.mid] = (key, sequence)
        info.wait_for_publish(5)
    sequence += 1
time.sleep(1.0)  # the last deliveries
with lock:
    accepted = {"a": set(), "b": set()}
    refused = {"a": set(), "b": set()}
    for mid, (key, number) in sent.items():
        code = acked.get(mid)
        if code in (0, 16):
            accepted[key].add(number)
        elif code == 135:
            refused[key].add(number)
        else:
            print(f"FAILED: message {key}/{number} got reason {code}")
            sys.exit(1)
    problems = []
    if refused["a"]:
        problems.append(f"always-allowed topic refused {len(refused['a'])} times")
    for key in ("a", "b"):
        if sorted(received[key]) != sorted(accepted[key]):
            lost = accepted[key] - set(received[key])
            extra = set(received[key]) - accepted[key]
            duplicates = len(received[key]) - len(set(received[key]))
            problems.append(f"{key}: lost {sorted(lost)[:10]}, unexpected {sorted(extra)[:10]}, duplicates {duplicates}")
if problems:
    print("FAILED: " + "; ".join(problems))
    sys.exit(1)
print(f"ok A={len(accepted['a'])} B_accepted={len(accepted['b'])} B_refused={len(refused['b'])}")
