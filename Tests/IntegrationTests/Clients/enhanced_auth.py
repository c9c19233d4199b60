"""MQTT 5 enhanced authentication against the real broker, over a raw socket: the client side of
SCRAM-SHA-256 written here from RFC 5802 §3 and §5 (hashlib and hmac, nothing of the broker's),
and re-authentication with AUTH 0x19. paho-mqtt 2.2 cannot send AUTH packets.

Usage: enhanced_auth.py SCENARIO PORT [ARGS...]; prints what it saw, ends with 'ok' and exits 0,
or says what went wrong and exits 1.
"""

import base64
import hashlib
import hmac
import os
import socket
import sys
import time

from mqtt_wire import packet, remaining_length, utf8

AUTH_METHOD, AUTH_DATA = 0x15, 0x16


def binary(data):
    return len(data).to_bytes(2, "big") + data


def properties(items):
    body = b""
    for identifier, value in items:
        body += bytes([identifier]) + (utf8(value) if identifier == AUTH_METHOD else binary(value))
    return remaining_length(len(body)) + body


def connect(client_id, method=None, data=None, username=None, password=None, version=5):
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = utf8("MQTT") + bytes([version, flags]) + (30).to_bytes(2, "big")
    if version == 5:
        items = [(AUTH_METHOD, method)] if method else []
        if data is not None:
            items.append((AUTH_DATA, data))
        body += properties(items)
    body += utf8(client_id)
    if username:
        body += utf8(username)
    if password:
        body += binary(password.encode())
    return packet(0x10, body)


def auth(reason, method, data):
    return packet(0xF0, bytes([reason]) + properties([(AUTH_METHOD, method), (AUTH_DATA, data)]))


def subscribe(topic, packet_id=1):
    return packet(0x82, packet_id.to_bytes(2, "big") + b"\x00" + utf8(topic) + b"\x01")


def publish_qos1(topic, payload, packet_id):
    return packet(0x32, utf8(topic) + packet_id.to_bytes(2, "big") + b"\x00" + payload)


class Connection:
    def __init__(self, port):
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.unread = b""

    def send(self, data):
        self.socket.sendall(data)

    def read(self):
        """(packet type, flags, body), or None once the broker closed the connection."""
        while True:
            if len(self.unread) >= 2:
                length, multiplier, position = 0, 1, 1
                while position < len(self.unread):
                    byte = self.unread[position]
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    position += 1
                    if not byte & 0x80:
                        break
                else:
                    position = None
                if position is not None and len(self.unread) >= position + length:
                    first, body = self.unread[0], self.unread[position:position + length]
                    self.unread = self.unread[position + length:]
                    return first >> 4, first & 0x0F, body
            try:
                chunk = self.socket.recv(4096)
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            self.unread += chunk


def reason_and_properties(body, skip=0):
    """The reason code and the authentication properties of CONNACK (skip=1), AUTH or DISCONNECT."""
    reason = body[skip] if len(body) > skip else 0
    found, position = {}, skip + 1
    if position < len(body):
        length, multiplier = 0, 1
        while True:
            byte = body[position]
            position += 1
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        end = position + length
        while position < end:
            identifier = body[position]
            position += 1
            if identifier in (AUTH_METHOD, AUTH_DATA, 0x12, 0x1A, 0x1C, 0x1F):  # strings and binary data
                size = int.from_bytes(body[position:position + 2], "big")
                found[identifier] = body[position + 2:position + 2 + size]
                position += 2 + size
            elif identifier in (0x11, 0x27):  # four-byte integers
                position += 4
            elif identifier in (0x21, 0x22, 0x13):  # two-byte integers
                position += 2
            elif identifier in (0x24, 0x25, 0x28, 0x29, 0x2A):  # bytes
                position += 1
            else:
                sys.exit(f"unexpected property 0x{identifier:02x}")
    return reason, found


def expect(connection, packet_type, what):
    received = connection.read()
    if received is None or received[0] != packet_type:
        sys.exit(f"expected {what}, got {received!r}")
    return received[2]


# SCRAM-SHA-256, the client's side (RFC 5802 §3, RFC 7677).
def scram_client_final(password, client_first_bare, server_first, tamper=False):
    fields = dict(field.split("=", 1) for field in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=" + base64.b64encode(b"n,,").decode() + ",r=" + fields["r"]
    auth_message = ",".join([client_first_bare, server_first, without_proof]).encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytearray(a ^ b for a, b in zip(client_key, signature))
    if tamper:
        proof[0] ^= 0x01
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected_server = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest()).decode()
    return without_proof + ",p=" + base64.b64encode(bytes(proof)).decode(), expected_server


def scram(port, user, password, tamper=False, reauthenticate=False):
    """Runs the exchange at CONNECT (and, with `reauthenticate`, once more with AUTH 0x19); returns
    the reason code of the CONNACK (or of the re-authentication's AUTH) after checking the server."""
    connection = Connection(port)
    reason = scram_exchange(connection, user, password, tamper, first=None)
    if reason == 0 and reauthenticate:
        reason = scram_exchange(connection, user, password, tamper, first=0x19)
        print("re-authenticated with SCRAM")
    return reason


def scram_exchange(connection, user, password, tamper, first):
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user},r={nonce}"
    if first is None:
        connection.send(connect("scram-" + user, "SCRAM-SHA-256", ("n,," + bare).encode()))
    else:
        connection.send(auth(first, "SCRAM-SHA-256", ("n,," + bare).encode()))
    received = connection.read()
    if received and received[0] == 2:  # CONNACK at once
        return reason_and_properties(received[2], skip=1)[0]
    if received is None or received[0] != 15:
        sys.exit(f"expected AUTH with the server-first message, got {received!r}")
    reason, found = reason_and_properties(received[2])
    server_first = found.get(AUTH_DATA, b"").decode()
    if reason != 0x18 or found.get(AUTH_METHOD) != b"SCRAM-SHA-256" or not server_first.startswith("r=" + nonce):
        sys.exit(f"the server-first message is wrong: reason 0x{reason:02x}, {found!r}")
    final, expected_server = scram_client_final(password, bare, server_first, tamper)
    connection.send(auth(0x18, "SCRAM-SHA-256", final.encode()))
    if first is None:
        reason, found = reason_and_properties(expect(connection, 2, "CONNACK"), skip=1)
    else:
        reason, found = reason_and_properties(expect(connection, 15, "AUTH"))
    if reason == 0:
        # The client checks the server too: only a server holding the verifier can sign.
        if found.get(AUTH_DATA, b"").decode() != "v=" + expected_server:
            sys.exit(f"the server's signature is wrong: {found!r}")
        print("server signature verified")
    return reason


def jwt_session(port, user, token, client_id):
    connection = Connection(port)
    connection.send(connect(client_id, "GH-JWT", token.encode(), username=user))
    reason, _ = reason_and_properties(expect(connection, 2, "CONNACK"), skip=1)
    if reason != 0:
        sys.exit(f"CONNECT with GH-JWT refused: 0x{reason:02x}")
    return connection


def reauthenticate(connection, token):
    """Sends AUTH 0x19; returns ('auth', reason) or ('disconnect', reason)."""
    connection.send(auth(0x19, "GH-JWT", token.encode()))
    while True:
        received = connection.read()
        if received is None:
            return ("closed", None)
        if received[0] == 15:
            return ("auth", reason_and_properties(received[2])[0])
        if received[0] == 14:
            return ("disconnect", received[2][0] if received[2] else 0)


def main():
    scenario, port = sys.argv[1], int(sys.argv[2])
    arguments = sys.argv[3:]
    if scenario == "scram":
        user, password, expected = arguments[0], arguments[1], int(arguments[2], 16)
        reason = scram(port, user, password)
        print(f"CONNACK 0x{reason:02x}")
        if reason != expected:
            sys.exit(f"expected CONNACK 0x{expected:02x}")
    elif scenario == "scram-reauth":
        reason = scram(port, arguments[0], arguments[1], reauthenticate=True)
        if reason != 0:
            sys.exit(f"SCRAM re-authentication answered 0x{reason:02x}")
    elif scenario == "scram-tampered":
        reason = scram(port, arguments[0], arguments[1], tamper=True)
        print(f"CONNACK 0x{reason:02x}")
        if reason != 0x87:
            sys.exit("a tampered proof must be refused with 0x87")
    elif scenario == "bad-method":
        connection = Connection(port)
        connection.send(connect("bad-method", "KERBEROS-V5", b"ticket"))
        reason, _ = reason_and_properties(expect(connection, 2, "CONNACK"), skip=1)
        print(f"CONNACK 0x{reason:02x}")
        if reason != 0x8C or connection.read() is not None:
            sys.exit("an unknown method must get CONNACK 0x8C and the connection closed")
    elif scenario == "auth-before-connect":
        connection = Connection(port)
        connection.send(auth(0x18, "SCRAM-SHA-256", b"n,,n=a,r=b"))
        received = connection.read()
        if received is not None:
            sys.exit(f"AUTH before CONNECT must close the connection, got {received!r}")
        print("closed without an answer")
    elif scenario == "auth-v311":
        connection = Connection(port)
        connection.send(connect("old-client", username=arguments[0], password=arguments[1], version=4))
        connack = expect(connection, 2, "CONNACK")
        if connack[1] != 0:
            sys.exit(f"3.1.1 CONNECT refused: {connack!r}")
        connection.send(auth(0x19, "GH-JWT", b"x"))
        received = connection.read()
        if received is not None:
            sys.exit(f"AUTH from a 3.1.1 client must close the connection, got {received!r}")
        print("closed without an answer")
    elif scenario == "reauth-keeps-session":
        # CONNECT with a JWT that expires in a few seconds, re-authenticate with a fresh one, and
        # keep receiving QoS 1 messages on the same connection after the first JWT's end.
        user, short, fresh, wait = arguments[0], arguments[1], arguments[2], float(arguments[3])
        connection = jwt_session(port, user, short, "reauth-" + user)
        connection.send(subscribe("reauth/t"))
        expect(connection, 9, "SUBACK")
        answer = reauthenticate(connection, fresh)
        if answer != ("auth", 0):
            sys.exit(f"re-authentication with a fresh JWT must get AUTH 0x00, got {answer!r}")
        print("reauthenticated")
        time.sleep(wait)  # past the first JWT's expiry
        connection.send(publish_qos1("reauth/t", b"still here", 7))
        seen = set()
        while seen != {"puback", "message"}:
            received = connection.read()
            if received is None:
                sys.exit(f"the connection ended after the first JWT's expiry (saw {seen})")
            if received[0] == 4:
                seen.add("puback")
            elif received[0] == 3 and b"still here" in received[2]:
                seen.add("message")
                packet_id = received[2][2 + int.from_bytes(received[2][:2], "big"):][:2]
                connection.send(packet(0x40, packet_id))
            elif received[0] == 14:
                sys.exit(f"DISCONNECT 0x{received[2][0]:02x} after re-authentication")
        print("QoS 1 delivered after the first JWT expired")
    elif scenario == "reauth-refused":
        user, first, bad = arguments[0], arguments[1], arguments[2]
        connection = jwt_session(port, user, first, "refused-" + user)
        answer = reauthenticate(connection, bad)
        print(f"answer {answer}")
        if answer != ("disconnect", 0x87):
            sys.exit("a refused re-authentication must end the session with DISCONNECT 0x87")
    elif scenario == "reauth-then-wait":
        # Re-authenticates, then waits for the broker to end the session (a revocation).
        user, first, fresh = arguments[0], arguments[1], arguments[2]
        connection = jwt_session(port, user, first, "revoked-" + user)
        if reauthenticate(connection, fresh) != ("auth", 0):
            sys.exit("re-authentication refused")
        print("reauthenticated", flush=True)
        connection.socket.settimeout(30)
        received = connection.read()
        if received is None or received[0] != 14:
            sys.exit(f"expected DISCONNECT, got {received!r}")
        print(f"DISCONNECT 0x{received[2][0]:02x}")
    else:
        sys.exit(f"unknown scenario {scenario}")
    print("ok")


if __name__ == "__main__":
    main()
