#!/usr/bin/env python3
"""A stdlib-only protocol client, so tests can speak to the agent as another user.

Usage: rawclient.py SOCKET FRAMES_JSON [READ_SECONDS]
Sends each frame of the JSON list (a "pid": "self" is replaced by this process's pid), then
prints every frame the agent sends back as one JSON line, and "EOF" if the agent closed the
connection, until READ_SECONDS pass without anything new.
"""

import json
import os
import socket
import struct
import sys


def main() -> None:
    path, frames = sys.argv[1], json.loads(sys.argv[2])
    wait = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        print(json.dumps({"connect_error": str(e)}))
        return
    for f in frames:
        if f.get("pid") == "self":
            f["pid"] = os.getpid()
        body = json.dumps(f).encode()
        try:
            s.sendall(struct.pack(">I", len(body)) + body)
        except (BrokenPipeError, ConnectionResetError):
            break  # the agent refused an earlier frame and closed: read what it said
    s.settimeout(wait)
    buf = b""
    while True:
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            data = b""
        if not data:
            print("EOF")
            break
        buf += data
        while len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + n:
                break
            print(json.dumps(json.loads(buf[4 : 4 + n])))
            buf = buf[4 + n :]
    sys.stdout.flush()


if __name__ == "__main__":
    main()
