"""MQTT 5.0 features checked with paho-mqtt 2.x against a running broker.

Usage: paho_mqtt5.py PORT CHECK. Exits 0 and prints "ok" when the check holds; otherwise
prints what differed and exits 1.
"""
import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
CHECK = sys.argv[2]


def client(name, clean_start=True, session_expiry=None):
    """A connected client whose received messages land in client.inbox."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.inbox = queue.Queue()
    c.connack = queue.Queue()
    c.on_message = lambda _c, _u, message: c.inbox.put(message)
    c.on_connect = lambda _c, _u, flags, reason, props: c.connack.put((flags, reason, props))
    c.subscribed = queue.Queue()
    c.on_subscribe = lambda _c, _u, mid, reasons, props: c.subscribed.put(reasons)
    properties = Properties(PacketTypes.CONNECT)
    if session_expiry is not None:
        properties.SessionExpiryInterval = session_expiry
    c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean_start, properties=properties)
    c.loop_start()
    flags, reason, _ = c.connack.get(timeout=5)
    expect(not reason.is_failure, f"CONNACK {reason}")
    c.session_present = flags.session_present
    return c


def subscribe(c, topic, **options):
    properties = None
    if "sub_id" in options:
        properties = Properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = options.pop("sub_id")
    c.subscribe([(topic, SubscribeOptions(qos=options.pop("qos", 1), **options))], properties=properties)
    reasons = c.subscribed.get(timeout=5)
    expect(all(not r.is_failure for r in reasons), f"SUBACK {reasons}")


def offline_subscriber(prefix, topic):
    """A persistent session (expiry 300 s) subscribed to topic, whose client has gone away."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    away = client(name, clean_start=True, session_expiry=300)
    subscribe(away, topic)
    away.disconnect()
    away.loop_stop()
    return name


def expect(condition, message):
    if not condition:
        print("FAILED:", message)
        sys.exit(1)


def receive(c, timeout=5):
    try:
        return c.inbox.get(timeout=timeout)
    except queue.Empty:
        expect(False, "no message arrived")


def check_user_properties_and_expiry():
    sub = client(f"sub-{uuid.uuid4().hex[:8]}")
    subscribe(sub, "props/#", sub_id=7)
    pub = client(f"pub-{uuid.uuid4().hex[:8]}")
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("unit", "celsius"), ("site", "north")]
    properties.MessageExpiryInterval = 120
    properties.ContentType = "text/plain"
    properties.ResponseTopic = "props/reply"
    properties.CorrelationData = b"\x01\x02"
    pub.publish("props/t", b"21.5", qos=1, properties=properties).wait_for_publish(5)
    message = receive(sub)
    got = message.properties
    expect(got.UserProperty == [("unit", "celsius"), ("site", "north")], f"user properties {got.UserProperty}")
    expect(110 <= got.MessageExpiryInterval <= 120, f"expiry {got.MessageExpiryInterval}")
    expect(got.ContentType == "text/plain" and got.ResponseTopic == "props/reply", "content type / response topic")
    expect(got.CorrelationData == b"\x01\x02", f"correlation data {got.CorrelationData}")
    expect(got.SubscriptionIdentifier == [7], f"subscription identifier {got.SubscriptionIdentifier}")


def check_expired_message_is_not_delivered():
    name = offline_subscriber("late", "expiring/#")
    pub = client(f"pub-{uuid.uuid4().hex[:8]}")
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub.publish("expiring/short", b"stale", qos=1, properties=short).wait_for_publish(5)
    pub.publish("expiring/long", b"fresh", qos=1).wait_for_publish(5)
    time.sleep(2.2)
    back = client(name, clean_start=False, session_expiry=300)
    message = receive(back)
    expect(message.payload == b"fresh", f"got {message.payload!r} first: the expired message was delivered")


def check_topic_alias():
    sub = client(f"sub-{uuid.uuid4().hex[:8]}")
    subscribe(sub, "alias/+/data")
    pub = client(f"pub-{uuid.uuid4().hex[:8]}")
    first = Properties(PacketTypes.PUBLISH)
    first.TopicAlias = 3
    pub.publish("alias/long/data", b"1", qos=1, properties=first).wait_for_publish(5)
    # The second PUBLISH carries an empty topic and only the alias.
    pub.publish("", b"2", qos=1, properties=first).wait_for_publish(5)
    topics = [receive(sub).topic, receive(sub).topic]
    expect(topics == ["alias/long/data", "alias/long/data"], f"topics {topics}")


def check_no_local():
    me = client(f"me-{uuid.uuid4().hex[:8]}")
    subscribe(me, "chat/room", noLocal=True)
    subscribe(me, "chat/marker")
    me.publish("chat/room", b"echo?", qos=1).wait_for_publish(5)
    me.publish("chat/marker", b"end", qos=1).wait_for_publish(5)
    message = receive(me)
    expect(message.topic == "chat/marker", f"received its own message on {message.topic}")


def check_session_expiry():
    name = offline_subscriber("durable", "queue/#")
    pub = client(f"pub-{uuid.uuid4().hex[:8]}")
    pub.publish("queue/1", b"kept", qos=1).wait_for_publish(5)
    back = client(name, clean_start=False, session_expiry=300)
    expect(back.session_present, "session present was not set")
    expect(receive(back).payload == b"kept", "the queued message did not arrive")

    # Expiry 0 on the last connection: the session ends with it.
    gone = f"ephemeral-{uuid.uuid4().hex[:8]}"
    short = client(gone, clean_start=True, session_expiry=0)
    short.disconnect()
    short.loop_stop()
    again = client(gone, clean_start=False)
    expect(not again.session_present, "an expiry-0 session outlived its connection")


def check_shared_subscription():
    members = [client(f"worker-{i}-{uuid.uuid4().hex[:6]}") for i in range(2)]
    for member in members:
        subscribe(member, "$share/workers/tasks/#")
    pub = client(f"pub-{uuid.uuid4().hex[:8]}")
    for index in range(6):
        pub.publish(f"tasks/{index}", str(index).encode(), qos=1).wait_for_publish(5)
    counts = []
    for member in members:
        got = 0
        while True:
            try:
                member.inbox.get(timeout=1)
                got += 1
            except queue.Empty:
                break
        counts.append(got)
    expect(sum(counts) == 6, f"each task once in total, got {counts}")
    expect(counts == [3, 3], f"round robin between two members, got {counts}")


def check_shutdown_disconnect():
    """Waits, connected, until the test stops the broker; expects DISCONNECT 0x8B first."""
    reasons = queue.Queue()
    c = client(f"stay-{uuid.uuid4().hex[:8]}")
    c.on_disconnect = lambda _c, _u, flags, reason, props: reasons.put(reason)
    print("connected", flush=True)
    reason = reasons.get(timeout=20)
    expect(reason.value == 0x8B, f"disconnect reason {reason} ({reason.value})")


CHECKS = {
    "user-properties-and-expiry": check_user_properties_and_expiry,
    "expired-message": check_expired_message_is_not_delivered,
    "topic-alias": check_topic_alias,
    "no-local": check_no_local,
    "session-expiry": check_session_expiry,
    "shutdown-disconnect": check_shutdown_disconnect,
    "shared-subscription": check_shared_subscription,
}

CHECKS[CHECK]()
print("ok")
sys.exit(0)
