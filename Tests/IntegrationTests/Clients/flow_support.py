"""What the flow scripts share: one 'ok: …' line per check, the gatehouse CLI, and waiting."""

import os
import subprocess
import sys
import threading
import time

GATEHOUSE = os.environ.get("GATEHOUSE_BINARY", "gatehouse")


def check(condition, what, detail=""):
    """Prints 'ok: WHAT', or 'FAILED: WHAT DETAIL' and exits 1."""
    if not condition:
        print(f"FAILED: {what} {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def gatehouse_iam(data_dir, *arguments, expect_success=True):
    """`gatehouse iam ARGUMENTS --data-dir DATA_DIR`; its standard output, stripped."""
    result = subprocess.run([GATEHOUSE, "iam", *arguments, "--data-dir", data_dir], capture_output=True, text=True,
                            timeout=30)
    if expect_success:
        check(result.returncode == 0, f"iam {' '.join(arguments)}", result.stderr)
    return result.stdout.strip()


def wait(condition, seconds):
    """Polls `condition` until it holds or `seconds` pass; returns its last value."""
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.02)
    return condition()


class Subscriber:
    """`mosquitto_sub -d ARGUMENTS` left running, its output lines collected as they come."""

    def __init__(self, *arguments):
        self.process = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-d", *arguments],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def saw(self, text):
        return any(text in line for line in self.lines)

    def wait_for(self, text, seconds=5):
        return wait(lambda: self.saw(text), seconds)

    def kill(self):
        self.process.kill()
