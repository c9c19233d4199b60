"""Durability across restarts: each scenario runs the real broker (GATEHOUSE_BINARY), drives it
with paho-mqtt and a raw-socket MQTT 5 client, kills it with SIGKILL (or stops it with SIGTERM),
starts it again on the same data directory and checks what came back.

Usage: persistence_restart.py SCENARIO DATA_DIR
Prints one 'ok: …' line per check; exits 1 at the first failure.
"""
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from flow_support import GATEHOUSE, check, wait
from mqtt_wire import packet, remaining_length, utf8

SCENARIO, DATA_DIR = sys.argv[1], sys.argv[2]
STORE = os.path.join(DATA_DIR, "broker.sqlite")


class Broker:
    """`gatehouse serve` on a free port with the scenario's data directory."""

    def __init__(self, *extra):
        self.log_path = os.path.join(DATA_DIR, f"broker-{time.time_ns()}.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [GATEHOUSE, "serve", "--allow-anonymous", "--listen", "mqtt://127.0.0.1:0", "--data-dir", DATA_DIR,
             "--sys-interval", "0", *extra], stdout=self.log, stderr=subprocess.STDOUT)
        found = wait(lambda: re.search(r"listening on mqtt://127\.0\.0\.1:(\d+)", self.text()) or
                     self.process.poll() is not None, 20)
        match = re.search(r"listening on mqtt://127\.0\.0\.1:(\d+)", self.text())
        check(match is not None, "the broker starts", "" if found else self.text())
        self.port = int(match.group(1))

    def text(self):
        with open(self.log_path) as log:
            return log.read()

    def kill(self, what="the broker is killed with SIGKILL"):
        self.process.send_signal(signal.SIGKILL)
        check(self.process.wait(10) == -signal.SIGKILL, what, "(it had already exited)")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)


class Client:
    """A paho-mqtt client that records what it receives and how its CONNECT was answered."""

    def __init__(self, port, client_id, version=mqtt.MQTTv5, clean=False, expiry=300, manual_ack=False):
        self.messages = []
        self.connected = threading.Event()
        self.session_present = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                                  manual_ack=manual_ack, **({} if version == mqtt.MQTTv5 else {"clean_session": clean}))
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)
        arguments = {"keepalive": 60}
        if version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = expiry
            arguments.update(clean_start=clean, properties=properties)
        self.client.connect("127.0.0.1", port, **arguments)
        self.client.loop_start()
        check(self.connected.wait(10), f"{client_id} connects")

    def _on_connect(self, _client, _userdata, flags, reason, _properties):
        self.session_present = flags.session_present
        self.connected.set()

    def subscribe(self, topic, qos):
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos)
        check(done.wait(5), f"SUBACK for {topic}")

    def payloads(self):
        return [message.payload.decode() for message in self.messages]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(port, messages):
    """Publishes (topic, payload, qos, retain, properties) tuples and waits for every acknowledgement."""
    publisher = Client(port, f"publisher-{time.time_ns()}", clean=True, expiry=0)
    infos = []
    for topic, payload, qos, retain, properties in messages:
        infos.append(publisher.client.publish(topic, payload, qos=qos, retain=retain, properties=properties))
    for info in infos:
        info.wait_for_publish(10)
    check(all(info.is_published() for info in infos), f"every one of {len(infos)} publishes is acknowledged")
    publisher.close()


def stored_sessions():
    with sqlite3.connect(STORE) as db:
        return {row[0] for row in db.execute("SELECT client_id FROM session")}


# MARK: A raw MQTT 5 client, for packets paho will not hold back (a PUBREL it never sends).

class RawClient:
    def __init__(self, port, client_id, expiry=300, clean=False):
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=5)
        properties = b"\x11" + struct.pack("!I", expiry)
        body = utf8("MQTT") + bytes([5, 0x02 if clean else 0]) + struct.pack("!H", 60)
        body += remaining_length(len(properties)) + properties + utf8(client_id)
        self.socket.sendall(packet(0x10, body))
        kind, response = self.read()
        check(kind == 0x20 and response[1] == 0, f"raw {client_id} gets CONNACK success")
        self.session_present = response[0] & 1 == 1

    def read(self):
        header = self.socket.recv(1)
        check(len(header) == 1, "the broker answers")
        length, shift = 0, 0
        while True:
            byte = self.socket.recv(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        body = b""
        while len(body) < length:
            body += self.socket.recv(length - len(body))
        return header[0] & 0xF0, body

    def publish_qos2(self, topic, payload, packet_id, duplicate=False):
        body = utf8(topic) + struct.pack("!H", packet_id) + b"\x00" + payload.encode()
        self.socket.sendall(packet(0x34 | (0x08 if duplicate else 0), body))
        kind, response = self.read()
        check(kind == 0x50 and struct.unpack("!H", response[:2])[0] == packet_id, f"PUBREC for packet {packet_id}")

    def release(self, packet_id):
        self.socket.sendall(packet(0x62, struct.pack("!H", packet_id)))
        kind, response = self.read()
        check(kind == 0x70 and (len(response) == 2 or response[2] == 0), f"PUBCOMP for packet {packet_id}")

    def drop(self):
        self.socket.close()


# MARK: Scenarios

def acknowledged_messages_survive_kill():
    count = 50
    broker = Broker()
    subscriber = Client(broker.port, "durable-subscriber")
    subscriber.subscribe("fleet/#", 2)
    subscriber.close()
    classic = Client(broker.port, "classic-clean", version=mqtt.MQTTv311, clean=True)
    classic.subscribe("fleet/#", 1)
    publish_all(broker.port, [(f"fleet/q1/{i}", f"q1-{i}", 1, False, None) for i in range(count)] +
                [(f"fleet/q2/{i}", f"q2-{i}", 2, False, None) for i in range(count)])
    broker.kill("the broker is killed with SIGKILL right after the last acknowledgement")
    sessions = stored_sessions()
    check("durable-subscriber" in sessions and "classic-clean" not in sessions,
          "the store holds the persistent session and nothing of the 3.1.1 clean session", str(sessions))

    broker = Broker()
    # Queued behind the stored messages, which stay on disk until the subscriber returns. QoS 2
    # like the last stored ones: paho hands a QoS 2 message over at PUBREL, a QoS 1 one at once.
    publish_all(broker.port, [(f"fleet/after/{i}", f"after-{i}", 2, False, None) for i in range(5)])
    subscriber = Client(broker.port, "durable-subscriber")
    check(subscriber.session_present, "the subscriber resumes with Session Present 1")
    wait(lambda: len(subscriber.messages) >= 2 * count + 5, 10)
    time.sleep(0.5)  # a duplicate would arrive now
    payloads = subscriber.payloads()
    expected = [f"q1-{i}" for i in range(count)] + [f"q2-{i}" for i in range(count)] + \
        [f"after-{i}" for i in range(5)]
    check(sorted(payloads) == sorted(expected), f"exactly the {2 * count} messages and the 5 sent since arrive, "
          "each once", f"got {len(payloads)}: {sorted(set(expected) - set(payloads))[:5]} missing")
    check(payloads == expected, "in the order they were published, the stored ones first", str(payloads))
    qos2 = [m for m in subscriber.messages if m.payload.decode().startswith("q2-")]
    check(all(m.qos == 2 for m in qos2), "the QoS 2 messages arrive at QoS 2")
    subscriber.close()
    classic = Client(broker.port, "classic-clean", version=mqtt.MQTTv311, clean=False)
    check(not classic.session_present, "the 3.1.1 clean-session client finds no session")
    classic.close()
    check(broker.stop() == 0, "SIGTERM stops the broker with status 0")
    wal = STORE + "-wal"
    check(not os.path.exists(wal) or os.path.getsize(wal) == 0, "SIGTERM checkpoints the write-ahead log")
    with sqlite3.connect(STORE) as db:
        left = db.execute("SELECT COUNT(*) FROM delivery").fetchone()[0] + \
            db.execute("SELECT COUNT(*) FROM message").fetchone()[0]
    check(left == 0, "acknowledged deliveries leave no rows behind", str(left))


def inflight_message_is_resent_with_dup():
    broker = Broker()
    holder = Client(broker.port, "slow-acker", manual_ack=True)
    holder.subscribe("orders/#", 1)
    publish_all(broker.port, [("orders/1", "first", 1, False, None)])
    check(wait(lambda: len(holder.messages) == 1, 5), "the subscriber receives the message and never acks it")
    check(not holder.messages[0].dup, "the first delivery has no DUP flag")
    time.sleep(0.3)  # the 'sent' state is committed in the background
    broker.kill()
    broker = Broker()
    resumed = Client(broker.port, "slow-acker")
    check(resumed.session_present, "the session comes back")
    check(wait(lambda: len(resumed.messages) == 1, 5), "the unacknowledged message is sent again")
    check(resumed.messages[0].dup and resumed.messages[0].payload == b"first", "with DUP set")
    resumed.close()
    broker.stop()


def inbound_qos2_is_not_routed_twice():
    broker = Broker()
    subscriber = Client(broker.port, "exactly-once-reader")
    subscriber.subscribe("meter/#", 2)
    subscriber.close()
    publisher = RawClient(broker.port, "exactly-once-writer")
    publisher.publish_qos2("meter/1", "reading-1", packet_id=7)
    broker.kill("killed after PUBREC, before the publisher's PUBREL")
    broker = Broker()
    publisher = RawClient(broker.port, "exactly-once-writer")
    check(publisher.session_present, "the publisher's session comes back")
    publisher.publish_qos2("meter/1", "reading-1", packet_id=7, duplicate=True)
    publisher.release(7)
    subscriber = Client(broker.port, "exactly-once-reader")
    wait(lambda: len(subscriber.messages) >= 1, 5)
    time.sleep(0.7)
    check(subscriber.payloads() == ["reading-1"], "the message is delivered exactly once", str(subscriber.payloads()))
    publisher.drop()
    subscriber.close()
    broker.stop()


def retained_messages_and_delayed_will_survive():
    broker = Broker()
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 2
    long = Properties(PacketTypes.PUBLISH)
    long.MessageExpiryInterval = 3600
    publish_all(broker.port, [
        ("state/kept", "one", 1, True, None),
        ("state/replaced", "old", 1, True, None), ("state/replaced", "new", 1, True, None),
        ("state/cleared", "soon gone", 1, True, None), ("state/cleared", "", 1, True, None),
        ("state/expiring", "brief", 1, True, short), ("state/lasting", "long", 1, True, long),
    ])
    published = time.time()
    will = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dying-device", protocol=mqtt.MQTTv5)
    will_properties = Properties(PacketTypes.WILLMESSAGE)
    will_properties.WillDelayInterval = 3
    will_properties.MessageExpiryInterval = 2  # shorter than the delay: it counts from publication
    will.will_set("devices/dying/status", "gone", qos=1, properties=will_properties)
    connect_properties = Properties(PacketTypes.CONNECT)
    connect_properties.SessionExpiryInterval = 600
    connected = threading.Event()
    will.on_connect = lambda *_: connected.set()
    will.connect("127.0.0.1", broker.port, clean_start=True, properties=connect_properties)
    will.loop_start()
    check(connected.wait(5), "the device with a delayed will connects")
    will.loop_stop()
    will.socket().shutdown(socket.SHUT_RDWR)  # the connection drops without DISCONNECT
    time.sleep(0.5)
    broker.kill()
    broker = Broker()
    watcher = Client(broker.port, "will-watcher", clean=True, expiry=0)
    watcher.subscribe("devices/#", 1)
    check(wait(lambda: "gone" in watcher.payloads(), 8), "the delayed will is published after the restart")
    gone = next(m for m in watcher.messages if m.payload == b"gone")
    check(getattr(gone.properties, "MessageExpiryInterval", None) in (1, 2),  # whole seconds left
          "the will's Message Expiry Interval starts when it is published", str(gone.properties))
    time.sleep(max(0, published + 2.5 - time.time()))
    reader = Client(broker.port, "retained-reader", clean=True, expiry=0)
    reader.subscribe("state/#", 1)
    wait(lambda: len(reader.messages) >= 3, 5)
    time.sleep(0.3)
    retained = {m.topic: m.payload.decode() for m in reader.messages}
    check(retained == {"state/kept": "one", "state/replaced": "new", "state/lasting": "long"},
          "retained messages come back set, replaced and cleared; the expired one does not", str(retained))
    lasting = next(m for m in reader.messages if m.topic == "state/lasting")
    remaining = getattr(lasting.properties, "MessageExpiryInterval", None)
    check(remaining is not None and 3590 < remaining <= 3600, "the expiry is counted down, not reset",
          str(remaining))
    watcher.close()
    reader.close()
    broker.stop()


def will_of_a_connection_lost_in_a_crash():
    broker = Broker()
    devices = {}
    for name in ["crashed", "polite"]:
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{name}", protocol=mqtt.MQTTv5)
        will_properties = Properties(PacketTypes.WILLMESSAGE)
        will_properties.MessageExpiryInterval = 2
        device.will_set(f"devices/{name}/status", "offline", qos=1, retain=True, properties=will_properties)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 600
        connected = threading.Event()
        device.on_connect = lambda *_, event=connected: event.set()
        device.connect("127.0.0.1", broker.port, clean_start=True, properties=properties)
        device.loop_start()
        check(connected.wait(5), f"device-{name} connects with a will")
        devices[name] = device
    devices["polite"].disconnect()
    devices["polite"].loop_stop()
    time.sleep(2.5)  # longer than the wills' expiry: it counts from publication, not from CONNECT
    broker.kill()
    devices["crashed"].loop_stop()
    broker = Broker()
    watcher = Client(broker.port, "status-watcher", clean=True, expiry=0)
    watcher.subscribe("devices/#", 1)
    wait(lambda: len(watcher.messages) >= 1, 5)
    time.sleep(0.3)
    statuses = {m.topic: m.payload.decode() for m in watcher.messages}
    check(statuses == {"devices/crashed/status": "offline"},
          "the will of a device connected at the kill is published after the restart; a normal DISCONNECT's is not",
          str(statuses))
    check(getattr(watcher.messages[0].properties, "MessageExpiryInterval", None) in (1, 2),
          "with its whole Message Expiry Interval", str(watcher.messages[0].properties))
    watcher.close()
    broker.stop()


def session_expired_while_down_is_gone():
    broker = Broker()
    brief = Client(broker.port, "brief-session", expiry=2)
    brief.subscribe("x/#", 1)
    brief.close()
    lasting = Client(broker.port, "lasting-session", expiry=300)
    lasting.subscribe("x/#", 1)
    lasting.close()
    time.sleep(0.3)
    broker.kill()
    time.sleep(2.5)
    broker = Broker()
    brief = Client(broker.port, "brief-session", expiry=2)
    check(not brief.session_present, "a session that expired while the broker was down is gone")
    lasting = Client(broker.port, "lasting-session", expiry=300)
    check(lasting.session_present, "one that had not expired is back")
    brief.close()
    lasting.close()
    broker.stop()


def persistence_off_keeps_nothing():
    broker = Broker("--persistence", "off")
    subscriber = Client(broker.port, "memory-only")
    subscriber.subscribe("m/#", 1)
    subscriber.close()
    again = Client(broker.port, "memory-only")
    check(again.session_present, "sessions still outlive connections in memory")
    again.close()
    broker.kill()
    check(not os.path.exists(STORE), "no store file is written")
    broker = Broker("--persistence", "off")
    again = Client(broker.port, "memory-only")
    check(not again.session_present, "and nothing survives a restart")
    again.close()
    broker.stop()


def damaged_or_newer_store_stops_startup():
    def start_fails(what):
        result = subprocess.run(
            [GATEHOUSE, "serve", "--allow-anonymous", "--listen", "mqtt://127.0.0.1:0", "--data-dir", DATA_DIR],
            capture_output=True, text=True, timeout=20)
        output = result.stdout + result.stderr
        check(result.returncode != 0 and STORE in output, f"{what} stops start-up naming the file", output)
        check("listening on" not in output, f"{what}: no listener opens")
        return output

    with open(STORE, "wb") as store:
        store.write(b"this is not a database " * 200)
    start_fails("a damaged store")
    os.remove(STORE)
    Broker().stop()
    with sqlite3.connect(STORE) as db:
        db.execute("INSERT INTO grdb_migrations (identifier) VALUES ('99-from-a-newer-gatehouse')")
    output = start_fails("a store from a newer schema")
    check("newer" in output, "the error says the store is newer", output)


SCENARIOS = {
    "damaged": damaged_or_newer_store_stops_startup,
    "acknowledged": acknowledged_messages_survive_kill,
    "inflight": inflight_message_is_resent_with_dup,
    "inbound-qos2": inbound_qos2_is_not_routed_twice,
    "retained-will": retained_messages_and_delayed_will_survive,
    "expiry": session_expired_while_down_is_gone,
    "lost-will": will_of_a_connection_lost_in_a_crash,
    "off": persistence_off_keeps_nothing,
}

os.makedirs(DATA_DIR, exist_ok=True)
SCENARIOS[SCENARIO]()
