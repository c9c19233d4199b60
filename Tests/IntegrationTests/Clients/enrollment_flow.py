"""Device certificate enrollment (seed 003) against a running Gatehouse, with the tools a
production line has: `openssl req` makes the key and CSR, `curl` enrolls, `mosquitto_pub`,
`mosquitto_sub` and paho-mqtt connect over mutual TLS with the issued certificate alone.

Usage: enrollment_flow.py HTTPS_PORT MQTTS_PORT DATA_DIR WORK_DIR
Prints one 'ok: …' line per check and exits non-zero at the first failed one.
"""

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt

from flow_support import Subscriber, check, gatehouse_iam

HTTPS_PORT, MQTTS_PORT, DATA_DIR, WORK = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
BASE = f"https://127.0.0.1:{HTTPS_PORT}"
CA = os.path.join(DATA_DIR, "certs", "ca.pem")
ADMIN = open(os.path.join(DATA_DIR, "admin.token")).read().strip()


def run(*command, input=None):
    return subprocess.run(command, capture_output=True, input=input, timeout=30)


def iam(*arguments):
    return gatehouse_iam(DATA_DIR, *arguments)


def path(name):
    return os.path.join(WORK, name)


def key_and_csr(name, algorithm=("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")):
    """A fresh key and a CSR that asks for a subject the CA must ignore."""
    result = run("openssl", "req", "-new", *algorithm, "-nodes", "-keyout", path(name + ".key"), "-out",
                 path(name + ".csr"), "-subj", "/CN=not-who-i-am/O=evil")
    check(result.returncode == 0, f"openssl req makes {name}'s key and CSR", result.stderr.decode())
    return path(name + ".key"), path(name + ".csr")


def curl(route, *arguments, body=None):
    """POST (with a body) or GET; returns (status, body bytes)."""
    command = ["curl", "-s", "--cacert", CA, "-o", path("out"), "-w", "%{http_code}", *arguments]
    if body is not None:
        command += ["--data-binary", "@" + body, "-H", "Content-Type: application/pkcs10"]
    result = run(*command, BASE + route)
    content = open(path("out"), "rb").read() if os.path.exists(path("out")) else b""
    return int(result.stdout.decode() or 0), content


def enroll(token, csr):
    return curl("/enroll", "-H", f"Authorization: Bearer {token}", body=csr)


def certificate_field(file, *options):
    return run("openssl", "x509", "-in", file, "-noout", *options).stdout.decode()


def mosquitto_pub(certificate, key):
    return run("mosquitto_pub", "-p", str(MQTTS_PORT), "--cafile", CA, "--cert", certificate, "--key", key, "-t",
               "tenants/acme/devices/sensor-7/telemetry/t", "-m", "hello", "-q", "1", "-i", "sensor-7")


iam("tenant", "add", "acme")
iam("identity", "add", "sensor-7", "--tenant", "acme", "--kind", "device", "--role", "device")

# Enroll: the subject and SAN come from the identity, never from the CSR.
key, csr = key_and_csr("device")
token = iam("enroll-token", "create", "sensor-7", "--expires", "1h")
status, chain = enroll(token, csr)
check(status == 200 and b"BEGIN CERTIFICATE" in chain, "POST /enroll issues a certificate", chain[:300])
open(path("device.pem"), "wb").write(chain)
subject = certificate_field(path("device.pem"), "-subject")
check("sensor-7" in subject and "evil" not in subject, "the subject is the identity's, not the CSR's", subject)
extensions = certificate_field(path("device.pem"), "-ext", "extendedKeyUsage,subjectAltName")
check("TLS Web Client Authentication" in extensions and "urn:gatehouse:acme:sensor-7" in extensions,
      "EKU clientAuth and the identity's SAN URI", extensions)
verified = run("openssl", "verify", "-CAfile", CA, path("device.pem"))
check(verified.returncode == 0, "openssl verifies it against the CA chain", verified.stdout.decode())
status, _ = enroll(token, csr)
check(status == 401, "a second use of the token is refused (401)")

# Over mutual TLS with no password: mosquitto_pub and paho.
published = mosquitto_pub(path("device.pem"), key)
check(published.returncode == 0, "mosquitto_pub connects over mTLS with the enrolled certificate alone",
      published.stdout.decode() + published.stderr.decode())
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor-7", protocol=mqtt.MQTTv5)
client.tls_set(ca_certs=CA, certfile=path("device.pem"), keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
client.tls_insecure_set(True)  # the development server certificate names localhost, the test dials 127.0.0.1
client.connect("127.0.0.1", MQTTS_PORT)
client.loop_start()
deadline = time.time() + 5
while not client.is_connected() and time.time() < deadline:
    time.sleep(0.02)
check(client.is_connected(), "paho connects over mTLS with the enrolled certificate")
info = client.publish("tenants/acme/devices/sensor-7/telemetry/t", b"paho", qos=1)
info.wait_for_publish(5)
check(info.is_published(), "paho publishes")
client.disconnect()
client.loop_stop()

# Refusals, each a clear 4xx.
short = iam("enroll-token", "create", "sensor-7", "--expires", "1s")
time.sleep(2.1)
status, body = enroll(short, key_and_csr("late")[1])
check(status == 401, "an expired token is refused (401)", body)
der = bytearray(run("openssl", "req", "-in", csr, "-outform", "DER").stdout)
der[-5] ^= 0xFF  # inside the signature
open(path("tampered.der"), "wb").write(base64.b64encode(bytes(der)))
status, body = enroll(iam("enroll-token", "create", "sensor-7"), path("tampered.der"))
check(status == 400 and b"signature" in body, "a CSR whose signature does not verify is refused (400)", body)
_, weak = key_and_csr("weak", ("-newkey", "rsa:1024"))
status, body = enroll(iam("enroll-token", "create", "sensor-7"), weak)
check(status == 400 and b"2048" in body, "an RSA-1024 key is refused (400)", body)
other_key, other_csr = key_and_csr("other")
pinned_key = run("openssl", "pkey", "-in", key, "-pubout", "-outform", "DER").stdout
pin = hashlib.sha256(pinned_key).hexdigest()
pinned = iam("enroll-token", "create", "sensor-7", "--public-key-sha256", pin)
status, body = enroll(pinned, other_csr)
check(status == 403, "a key other than the pinned one is refused (403)", body)
_, rsa_csr = key_and_csr("rsa", ("-newkey", "rsa:2048"))
status, _ = enroll(iam("enroll-token", "create", "sensor-7"), rsa_csr)
check(status == 200, "an RSA-2048 CSR is accepted")
status, _ = enroll(pinned, csr)
check(status == 200, "the pinned key itself is accepted")

# Renewal over mutual TLS with the current certificate.
new_key, new_csr = key_and_csr("renewed")
status, _ = curl("/renew", body=new_csr)
check(status == 401, "renewal without a client certificate is refused (401)")
status, renewed = curl("/renew", "--cert", path("device.pem"), "--key", key, body=new_csr)
check(status == 200 and b"BEGIN CERTIFICATE" in renewed, "POST /renew over mTLS issues the next certificate", renewed)
open(path("renewed.pem"), "wb").write(renewed)
check("sensor-7" in certificate_field(path("renewed.pem"), "-subject"), "the renewed certificate is the same identity")
check(mosquitto_pub(path("renewed.pem"), new_key).returncode == 0, "the renewed certificate connects")

# Revocation ends a live session within a second; the next handshake fails; the CRL lists it.
subscriber = Subscriber("-p", str(MQTTS_PORT), "--cafile", CA, "--cert", path("device.pem"), "--key", key, "-t",
                        "tenants/acme/devices/sensor-7/commands/+", "-V", "mqttv5", "-i", "sensor-7")
check(subscriber.wait_for("SUBACK"), "mosquitto_sub is connected with the certificate", subscriber.lines)
serial = certificate_field(path("device.pem"), "-serial").strip().split("=")[1]
started = time.time()
status, body = curl("/revoke", "--cert", path("device.pem"), "--key", key, "-d", "")
check(status == 200, "the device revokes its own certificate over mTLS", body)
check(subscriber.wait_for("DISCONNECT (152)", 3) and time.time() - started < 1.0,
      f"the live mosquitto_sub got DISCONNECT 0x98 after {time.time() - started:.2f} s", subscriber.lines)
subscriber.kill()
again = mosquitto_pub(path("device.pem"), key)
check(again.returncode != 0, "the next TLS handshake with the revoked certificate fails",
      again.stdout.decode() + again.stderr.decode())
status, crl = curl("/ca/crl")
open(path("crl.der"), "wb").write(crl)
listed = run("openssl", "crl", "-inform", "DER", "-in", path("crl.der"), "-noout", "-text").stdout.decode()
check(status == 200 and serial.upper() in listed.replace(":", "").upper(), "GET /ca/crl lists the serial", listed)
crl_verified = run("openssl", "crl", "-inform", "DER", "-in", path("crl.der"), "-CAfile", CA, "-noout")
check(crl_verified.returncode == 0, "the CRL's signature verifies with the CA", crl_verified.stderr.decode())
status, _ = curl("/renew", "--cert", path("device.pem"), "--key", key, body=new_csr)
check(status == 403, "a revoked certificate cannot renew (403)")
renewed_serial = certificate_field(path("renewed.pem"), "-serial").strip().split("=")[1]
status, _ = curl("/revoke", "-H", "Authorization: Bearer gth_" + "x" * 43, "-d", f"serial={renewed_serial}")
check(status == 403, "a non-admin token cannot revoke")
status, _ = curl("/revoke", "-H", f"Authorization: Bearer {ADMIN}", "-d", f"serial={renewed_serial}")
check(status == 200, "an admin revokes by serial")
check(mosquitto_pub(path("renewed.pem"), new_key).returncode != 0, "the admin-revoked certificate is refused too")

# EST (RFC 7030): cacerts and simpleenroll with the token as the Basic password, PKCS#7 answers.
status, cacerts = curl("/.well-known/est/cacerts")
open(path("cacerts.p7"), "wb").write(base64.b64decode(cacerts))
printed = run("openssl", "pkcs7", "-inform", "DER", "-in", path("cacerts.p7"), "-print_certs", "-noout")
check(status == 200 and "Gatehouse" in printed.stdout.decode(), "EST cacerts is a PKCS#7 of the CA", printed)
est_key, est_csr = key_and_csr("est")
der_csr = run("openssl", "req", "-in", est_csr, "-outform", "DER").stdout
open(path("est.b64"), "wb").write(base64.b64encode(der_csr))
est_token = iam("enroll-token", "create", "sensor-7")
status, body = curl("/.well-known/est/simpleenroll", "-u", f"sensor-7:{est_token}", body=path("est.b64"))
check(status == 200, "EST simpleenroll with the token as the Basic password", body)
open(path("est.p7"), "wb").write(base64.b64decode(body))
est_certs = run("openssl", "pkcs7", "-inform", "DER", "-in", path("est.p7"), "-print_certs")
open(path("est.pem"), "wb").write(est_certs.stdout)
check(b"sensor-7" in est_certs.stdout, "the EST answer is a PKCS#7 holding the device certificate")
check(mosquitto_pub(path("est.pem"), est_key).returncode == 0, "the EST certificate connects over mTLS")
status, _ = curl("/.well-known/est/simpleenroll", "-u", f"sensor-7:{est_token}", body=path("est.b64"))
check(status == 401, "the EST token is single-use too")
# The admin API issues enrollment tokens too.
api = run("curl", "-s", "--cacert", CA, "-H", f"Authorization: Bearer {ADMIN}", "-H", "Content-Type: application/json",
          "-d", json.dumps({"identity": "sensor-7", "expiresIn": 600}), BASE + "/enroll-tokens")
api_token = json.loads(api.stdout)["token"]
status, _ = enroll(api_token, key_and_csr("api")[1])
check(api_token.startswith("ghe_") and status == 200, "a token from POST /enroll-tokens enrolls")
listed = iam("enrolled", "list", "sensor-7")
check(listed.count("revoked") == 2 and listed.count("valid") >= 4, "iam enrolled list shows them", listed)
print("done", flush=True)
