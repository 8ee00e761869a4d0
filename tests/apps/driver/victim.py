#!/usr/bin/env python3
"""Victim for the driver tests: does one thing the driver must see, then exits. Stdlib only.

Usage: victim.py ACTION [ARGS...]
  connect HOST PORT        TCP connect (IPv4 or IPv6 literal)
  bind HOST                bind a TCP socket to HOST, port 0
  accept HOST              listen on HOST, port 0, print the port, accept one connection
  dns NAME                 a DNS query for NAME to 127.0.0.1:53, once with sendto() and once
                           on a connected UDP socket (send()); nothing listens, nothing waits
  ptrace                   fork a child, PTRACE_ATTACH to it, detach, kill and reap it
  memfd NAME               memfd_create(NAME)
  module ARGS              init_module(NULL, 0, ARGS) and finit_module(/dev/null, ARGS, 0)
  prctl NAME               prctl(PR_SET_NAME, NAME)
  open PATH                open PATH for writing
  read PATH...             open each PATH for reading
  sdk SOCKET MARKER        say hello to the agent as an SDK probe, send one trace, exit at once
"""

import ctypes
import json
import os
import signal
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def dns_packet(name: str) -> bytes:
    header = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack(">HH", 1, 1)


def frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def main() -> None:
    action, args = sys.argv[1], sys.argv[2:]
    if action == "connect":
        host, port = args[0], int(args[1])
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.connect((host, port))
    elif action == "accept":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((args[0], 0))
            s.listen()
            print(s.getsockname()[1], flush=True)
            conn, _ = s.accept()
            conn.close()
    elif action == "bind":
        fam = socket.AF_INET6 if ":" in args[0] else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((args[0], 0))
    elif action == "dns":
        pkt = dns_packet(args[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(pkt, ("127.0.0.1", 53))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", 53))
            s.send(pkt)
    elif action == "ptrace":
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        if libc.ptrace(16, child, None, None) != 0:  # PTRACE_ATTACH
            sys.exit(f"ptrace: errno {ctypes.get_errno()}")
        os.waitpid(child, 0)  # stopped by the attach
        libc.ptrace(17, child, None, None)  # PTRACE_DETACH
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        print(child)
    elif action == "memfd":
        os.close(os.memfd_create(args[0]))
    elif action == "module":
        # this kernel may have no module support (ENOSYS): the attempt is what is reported
        libc.syscall(175, None, 0, args[0].encode())
        fd = os.open("/dev/null", os.O_RDONLY)
        libc.syscall(313, fd, args[0].encode(), 0)
    elif action == "prctl":
        libc.prctl(15, args[0].encode(), 0, 0, 0)
    elif action == "open":
        with open(args[0], "w") as f:
            f.write("x")
    elif action == "read":
        for path in args:
            with open(path) as f:
                f.read()
    elif action == "sdk":
        path, marker = args
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        me = os.getpid()
        hello = {"message_type": 100, "pid": me, "runtime": "python", "data": {"mode": "sdk"}}
        trace = {
            "message_type": 2,
            "pid": me,
            "runtime": "python",
            "data": {"hook": "os.system", "kind": "process", "args": [marker]},
        }
        s.sendall(frame(hello) + frame(trace))
        s.close()
    else:
        sys.exit(f"unknown action {action}")


if __name__ == "__main__":
    main()
