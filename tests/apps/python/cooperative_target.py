#!/usr/bin/env python3
"""A target that "gets attached" when it receives SIGUSR2: it then connects to the agent as
an attached probe (stdlib only), and like a real probe reconnects whenever the agent goes
away, until killed.

It stands in for the runtime injectors in tests of the attach orchestration (record the
attach, inject, wait for the hello) and of auto-attach, which are the same for every runtime.
Usage: cooperative_target.py SOCKET [--ignore]   (--ignore: never connect, to test timeouts)
"""

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

attached = threading.Event()


def session(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    hello = {
        "message_type": 100,
        "pid": os.getpid(),
        "runtime": "python",
        "runtime_version": "{}.{}.{}".format(*sys.version_info[:3]),
        "probe_version": "cooperative",
        "data": {"mode": "attached", "hooks": ["os.system"]},
    }
    body = json.dumps(hello).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
    while s.recv(65536):
        pass


def main():
    path = sys.argv[1]
    if "--ignore" not in sys.argv:
        signal.signal(signal.SIGUSR2, lambda *_: attached.set())
    else:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    print("ready", flush=True)
    attached.wait()
    while True:
        with contextlib.suppress(OSError):  # the agent is away: retry, as a probe does
            session(path)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
