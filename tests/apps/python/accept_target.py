#!/usr/bin/env python3
"""A target blocked in accept() (no selector, no timeout): prints "ready PORT", then for each
connection runs `os.system("true")` and answers "done"."""

import os
import socket

s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(f"ready {s.getsockname()[1]}", flush=True)
while True:
    conn, _ = s.accept()
    os.system("true")
    conn.sendall(b"done")
    conn.close()
