"""Broker CPU per CONNECT for each way of authenticating, and per re-authentication, measured
from /proc/PID/stat over N sequential connections (the client's own work is not counted):
Gatehouse with a scrypt password, SCRAM-SHA-256, an API token and a token re-authentication
(GH-TOKEN, AUTH 0x19 on one connection), and Mosquitto 2.0 with a password_file, same run.

Usage: python3 Benchmarks/auth/connect_cpu.py [N]   (default 200; GATEHOUSE_BINARY, else
       .build/release/gatehouse)
"""
import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "IntegrationTests", "Clients"))
from enhanced_auth import (  # noqa: E402
    Connection, auth, connect, expect, reason_and_properties, scram_client_final,
)

BINARY = os.environ.get("GATEHOUSE_BINARY", ".build/release/gatehouse")
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 200
TICKS = os.sysconf("SC_CLK_TCK")
PASSWORD = "pencil sharpener"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def per_operation(pid, operation):
    before, began = cpu_seconds(pid), time.monotonic()
    for index in range(COUNT):
        operation(index)
    return (cpu_seconds(pid) - before) / COUNT * 1e6, COUNT / (time.monotonic() - began)


def plain_connect(port, user, password):
    def run(index):
        connection = Connection(port)
        connection.send(connect(f"bench-{index}", username=user, password=password, version=5))
        if reason_and_properties(expect(connection, 2, "CONNACK"), skip=1)[0] != 0:
            sys.exit("CONNECT refused")
        connection.send(bytes([0xE0, 0]))
        connection.socket.close()
    return run


def scram_connect(port):
    def run(index):
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = f"n=sensor-1,r={nonce}"
        connection = Connection(port)
        connection.send(connect(f"bench-{index}", "SCRAM-SHA-256", ("n,," + bare).encode()))
        _, found = reason_and_properties(expect(connection, 15, "AUTH"))
        final, _ = scram_client_final(PASSWORD, bare, found[0x16].decode())
        connection.send(auth(0x18, "SCRAM-SHA-256", final.encode()))
        if reason_and_properties(expect(connection, 2, "CONNACK"), skip=1)[0] != 0:
            sys.exit("SCRAM refused")
        connection.send(bytes([0xE0, 0]))
        connection.socket.close()
    return run


def token_reauthentication(connection, token):
    def run(index):
        connection.send(auth(0x19, "GH-TOKEN", token.encode()))
        if reason_and_properties(expect(connection, 15, "AUTH"))[0] != 0:
            sys.exit("re-authentication refused")
    return run


def gatehouse(data_dir):
    log = open(os.path.join(data_dir, "broker.log"), "w")
    process = subprocess.Popen(
        [BINARY, "serve", "--listen", "mqtt://127.0.0.1:0", "--data-dir", data_dir, "--sys-interval", "0",
         "--persistence", "off"], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        found = re.search(r"listening on mqtt://127\.0\.0\.1:(\d+)", open(log.name).read())
        if found:
            return process, int(found.group(1))
        time.sleep(0.05)
    sys.exit("the broker did not start")


def iam(data_dir, *arguments, stdin=None):
    result = subprocess.run([BINARY, "iam", *arguments, "--data-dir", data_dir], input=stdin, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


def mosquitto(directory):
    password_file = os.path.join(directory, "passwords")
    subprocess.run(["mosquitto_passwd", "-b", "-c", password_file, "sensor-1", PASSWORD], check=True)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = os.path.join(directory, "mosquitto.conf")
    with open(configuration, "w") as text:
        text.write(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {password_file}\n")
        if os.getuid() == 0:
            text.write("user root\n")  # otherwise it drops to 'mosquitto', who cannot read the file
    process = subprocess.Popen(["mosquitto", "-c", configuration], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    sys.exit("mosquitto did not start")


with tempfile.TemporaryDirectory() as data_dir:
    broker, port = gatehouse(data_dir)
    iam(data_dir, "tenant", "add", "acme")
    iam(data_dir, "identity", "add", "sensor-1", "--tenant", "acme", "--kind", "device", "--role", "device")
    iam(data_dir, "password", "set", "sensor-1", stdin=PASSWORD + "\n")
    token = iam(data_dir, "token", "create", "sensor-1")
    time.sleep(0.5)  # the broker sees the CLI's changes within 250 ms
    results = {
        "Gatehouse, password (scrypt)": per_operation(broker.pid, plain_connect(port, "sensor-1", PASSWORD)),
        "Gatehouse, SCRAM-SHA-256": per_operation(broker.pid, scram_connect(port)),
        "Gatehouse, API token": per_operation(broker.pid, plain_connect(port, "sensor-1", token)),
    }
    session = Connection(port)
    session.send(connect("reauth-bench", "GH-TOKEN", token.encode(), username="sensor-1"))
    expect(session, 2, "CONNACK")
    results["Gatehouse, token re-authentication (AUTH 0x19)"] = per_operation(
        broker.pid, token_reauthentication(session, token))
    broker.terminate()
    broker.wait(10)
    peer, peer_port = mosquitto(data_dir)
    results["Mosquitto 2.0, password_file"] = per_operation(peer.pid, plain_connect(peer_port, "sensor-1", PASSWORD))
    peer.terminate()
    peer.wait(10)

for name, (cpu, rate) in results.items():
    print(f"{name:50} {cpu:9.0f} µs broker CPU per operation   {rate:7.0f} /s (sequential)")
