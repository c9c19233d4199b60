"""Start-up time and memory with a large broker store: N persistent sessions, each with a
subscription and M/N queued QoS 1 messages, written straight into DATA_DIR/broker.sqlite (the
broker makes the schema on a first start), then the time from exec to 'listening on' and the
resident memory once listening.

Usage: python3 Benchmarks/persistence/startup_bench.py [SESSIONS] [MESSAGES]
       (default 100000 1000000; GATEHOUSE_BINARY, else .build/release/gatehouse)
"""
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "IntegrationTests", "Clients"))
from mqtt_wire import packet, utf8  # noqa: E402

BINARY = os.environ.get("GATEHOUSE_BINARY", ".build/release/gatehouse")
SESSIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
MESSAGES = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000


def start(data_dir):
    log = open(os.path.join(data_dir, "broker.log"), "w")
    began = time.monotonic()
    process = subprocess.Popen([BINARY, "serve", "--allow-anonymous", "--listen", "mqtt://127.0.0.1:0",
                                "--data-dir", data_dir, "--sys-interval", "0"], stdout=log, stderr=subprocess.STDOUT)
    while True:
        with open(log.name) as text:
            content = text.read()
        if re.search(r"listening on mqtt://", content):
            return process, time.monotonic() - began, content
        if process.poll() is not None or time.monotonic() - began > 300:
            sys.exit(f"the broker did not start:\n{content}")
        time.sleep(0.01)


def resident_kilobytes(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


def seed(store):
    principal = json.dumps({"identityID": "bench", "username": "bench", "clientIdentifier": "x", "tenant": "t",
                            "roles": ["anonymous"]}).encode()
    per_session = MESSAGES // SESSIONS
    now = int(time.time())
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA synchronous = OFF")
        db.executemany("INSERT INTO session VALUES (?, ?, 86400, ?)",
                       ((f"device-{i}", principal, now) for i in range(SESSIONS)))
        db.executemany("INSERT INTO subscription VALUES (?, ?, 1, NULL)",
                       ((f"device-{i}", f"fleet/device-{i}/commands/#") for i in range(SESSIONS)))
        payload = b"x" * 64

        def messages():
            for i in range(MESSAGES):
                topic = f"fleet/device-{i % SESSIONS}/commands/set"
                yield i + 1, packet(0x32, utf8(topic) + struct.pack("!H", 1) + b"\x00" + payload)

        db.executemany("INSERT INTO message (id, wire) VALUES (?, ?)", messages())
        db.executemany("INSERT INTO delivery (client_id, sequence, message_id, qos, retain) VALUES (?, ?, ?, 1, 0)",
                       ((f"device-{i % SESSIONS}", i // SESSIONS, i + 1) for i in range(per_session * SESSIONS)))


with tempfile.TemporaryDirectory() as data_dir:
    process, _, _ = start(data_dir)
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    empty, empty_seconds, _ = start(data_dir)
    empty_rss = resident_kilobytes(empty.pid)
    empty.send_signal(signal.SIGTERM)
    empty.wait(30)
    began = time.monotonic()
    seed(os.path.join(data_dir, "broker.sqlite"))
    print(f"seeded {SESSIONS} sessions and {MESSAGES} queued messages in {time.monotonic() - began:.1f} s "
          f"({os.path.getsize(os.path.join(data_dir, 'broker.sqlite')) / 1e6:.0f} MB)")
    full, seconds, log = start(data_dir)
    rss = resident_kilobytes(full.pid)
    loaded = re.search(r"elapsed=(\S+) .*messages=(\d+) .*sessions=(\d+)", log)
    print(f"empty store: listening after {empty_seconds:.2f} s, RSS {empty_rss / 1024:.0f} MiB")
    print(f"full store: listening after {seconds:.2f} s, RSS {rss / 1024:.0f} MiB "
          f"(load {loaded.group(1) if loaded else '?'} s, {loaded.group(3) if loaded else '?'} sessions, "
          f"{loaded.group(2) if loaded else '?'} messages)")
    began = time.monotonic()
    full.send_signal(signal.SIGTERM)
    full.wait(60)
    print(f"SIGTERM to exit: {time.monotonic() - began:.2f} s")
