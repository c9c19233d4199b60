"""Token endpoint and enrollment load on a release build, loopback only.

Starts `gatehouse serve` (release) on free ports, registers the clients with the CLI, then, for
each scenario, sends requests over keep-alive connections from PROCESSES worker processes and
reports requests per second and the broker's CPU per request (from /proc/PID/stat). Assertions
and CSRs are made before the clock starts, so the figures are the broker's.

    python3 Benchmarks/http/token_bench.py [--binary .build/release/gatehouse] [--requests 3000]

Scenarios: client_credentials with a client secret (scrypt per request, by design), with
private_key_jwt, the JWT-bearer grant, and enrollment of P-256 and RSA-2048 CSRs; then the
latency of the whole path assertion -> token -> MQTT CONNACK, p50 and p99.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import urlencode

import paho.mqtt.client as mqtt
from joserfc import jwt
from joserfc.jwk import ECKey

BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_all(arguments):
    """One worker: POSTs each prepared request on one keep-alive connection; returns (ok, failed)."""
    port, requests_ = arguments
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ok = failed = 0
    for path, body, headers in requests_:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            ok += 1
        else:
            failed += 1
    connection.close()
    return ok, failed


class Broker:
    def __init__(self, binary):
        self.binary = binary
        self.directory = tempfile.mkdtemp(prefix="gatehouse-bench-")
        acl = os.path.join(self.directory, "bench.acl")
        open(acl, "w").write("default deny\nrole device\n  allow all #\n")
        config = os.path.join(self.directory, "gatehouse.yaml")
        open(config, "w").write(
            "listeners:\n  - mqtt://127.0.0.1:0\n  - http://127.0.0.1:0\n"
            f"acl: {acl}\nlog_level: warning\n"
            "http:\n  token_rate_per_address: 0\n  token_rate_per_client: 0\n"
            "oauth:\n  max_assertion_lifetime: 3600\n")
        self.log = open(os.path.join(self.directory, "log"), "w+")
        self.process = subprocess.Popen(
            [binary, "serve", "--config", config, "--data-dir", self.directory, "--log-level", "info"],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            self.log.flush()
            text = open(self.log.name).read()
            found = dict(re.findall(r"listening on (\w+)://127\.0\.0\.1:(\d+)", text))
            if "http" in found and "mqtt" in found:
                self.http, self.mqtt = int(found["http"]), int(found["mqtt"])
                return
            time.sleep(0.1)
        sys.exit("the broker did not start:\n" + open(self.log.name).read())

    def iam(self, *arguments):
        result = subprocess.run([self.binary, "iam", *arguments, "--data-dir", self.directory],
                                capture_output=True, text=True, check=True)
        return result.stdout.strip()

    def enrollment_tokens(self, identity, count):
        """Through the admin API: a CLI process per token would take longer than the run."""
        admin = open(os.path.join(self.directory, "admin.token")).read().strip()
        connection = http.client.HTTPConnection("127.0.0.1", self.http, timeout=30)
        tokens = []
        for _ in range(count):
            connection.request("POST", "/enroll-tokens", body=json.dumps({"identity": identity}),
                               headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
            tokens.append(json.loads(connection.getresponse().read())["token"])
        return tokens

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def measure(broker, name, requests_, processes):
    chunks = [(broker.http, requests_[index::processes]) for index in range(processes)]
    before, started = cpu_seconds(broker.process.pid), time.perf_counter()
    with multiprocessing.Pool(processes) as pool:
        results = pool.map(post_all, chunks)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(broker.process.pid) - before
    ok = sum(result[0] for result in results)
    failed = sum(result[1] for result in results)
    line = (f"{name}: requests={len(requests_)} ok={ok} failed={failed} rps={ok / elapsed:.0f} "
            f"broker_cpu_us_per_request={cpu / max(ok, 1) * 1e6:.0f}")
    print(line, flush=True)
    return line


def assertion(key, issuer, audience):
    moment = int(time.time())
    claims = {"iss": issuer, "sub": issuer, "aud": audience, "iat": moment, "exp": moment + 3000,
              "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)


def csr(directory, algorithm):
    key, request = os.path.join(directory, "k"), os.path.join(directory, "r")
    subprocess.run(["openssl", "req", "-new", *algorithm, "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=x"],
                   check=True, capture_output=True)
    return open(request, "rb").read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=".build/release/gatehouse")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--latency-samples", type=int, default=300)
    options = parser.parse_args()
    broker = Broker(options.binary)
    token_url = f"http://127.0.0.1:{broker.http}/oauth/token"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        broker.iam("tenant", "add", "bench")
        for name in ("secret-client", "keyed-client", "agent"):
            broker.iam("identity", "add", name, "--tenant", "bench", "--kind", "service", "--role", "device")
        secret = broker.iam("client", "create", "secret-client", "--grant", "client_credentials", "--secret")
        keyed, agent = ECKey.generate_key("P-256", parameters={"kid": "k1"}), ECKey.generate_key(
            "P-256", parameters={"kid": "a1"})
        broker.iam("client", "create", "keyed-client", "--grant", "client_credentials", "--jwks",
                   json.dumps({"keys": [keyed.as_dict(private=False)]}))
        broker.iam("client", "create", "agent", "--grant", "jwt-bearer", "--jwks",
                   json.dumps({"keys": [agent.as_dict(private=False)]}))
        results = []
        # A client secret costs one scrypt (RFC 7914 interactive setting) per request, like a password.
        body = urlencode({"grant_type": "client_credentials", "client_id": "secret-client", "client_secret": secret})
        results.append(measure(broker, "client_credentials+secret", [("/oauth/token", body, form)] * 200,
                               options.processes))
        prepared = [("/oauth/token", urlencode({
            "grant_type": "client_credentials", "client_assertion_type": CLIENT_ASSERTION,
            "client_assertion": assertion(keyed, "keyed-client", token_url)}), form) for _ in range(options.requests)]
        results.append(measure(broker, "client_credentials+private_key_jwt", prepared, options.processes))
        prepared = [("/oauth/token", urlencode({"grant_type": BEARER, "assertion": assertion(agent, "agent", token_url)}),
                     form) for _ in range(options.requests)]
        results.append(measure(broker, "jwt-bearer", prepared, options.processes))
        broker.iam("identity", "add", "device-1", "--tenant", "bench", "--kind", "device", "--role", "device")
        scratch = tempfile.mkdtemp()
        for label, algorithm, count in (("P-256", ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"), 600),
                                        ("RSA-2048", ("-newkey", "rsa:2048"), 300)):
            request_body = csr(scratch, algorithm)
            tokens = broker.enrollment_tokens("device-1", count)
            prepared = [("/enroll", request_body, {"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/pkcs10"}) for token in tokens]
            results.append(measure(broker, f"enroll {label}", prepared, options.processes))
        shutil.rmtree(scratch, ignore_errors=True)
        # The whole path an agent takes: sign an assertion, get a token, CONNECT with it.
        samples = []
        connection = http.client.HTTPConnection("127.0.0.1", broker.http, timeout=30)
        for index in range(options.latency_samples):
            started = time.perf_counter()
            connection.request("POST", "/oauth/token",
                               body=urlencode({"grant_type": BEARER, "assertion": assertion(agent, "agent", token_url)}),
                               headers=form)
            access = json.loads(connection.getresponse().read())["access_token"]
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"agent-{index}", protocol=mqtt.MQTTv311)
            client.username_pw_set("agent", access)
            client.connect("127.0.0.1", broker.mqtt)
            connected = False
            while not connected:
                client.loop(0.01)
                connected = client.is_connected()
            samples.append(time.perf_counter() - started)
            client.disconnect()
        samples.sort()
        line = (f"assertion->token->CONNACK: samples={len(samples)} p50_ms={samples[len(samples) // 2] * 1e3:.2f} "
                f"p99_ms={samples[int(len(samples) * 0.99) - 1] * 1e3:.2f}")
        print(line, flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
