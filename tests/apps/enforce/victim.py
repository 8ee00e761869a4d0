"""A process to put under kernel enforcement (tests/integration/test_enforce.py).

Reads one command per line on stdin, answers one JSON line on stdout:
  connect HOST PORT   -> {"ok": true} or {"errno": N, "error": "..."}
  udp HOST PORT       -> sendto without connect, same answer
  run PROG ARG...     -> {"rc": returncode} (-9: the child was killed by SIGKILL)
"""

import json
import socket
import subprocess
import sys


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd in ("connect", "udp"):
                host, port = args[0], int(args[1])
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                kind = socket.SOCK_STREAM if cmd == "connect" else socket.SOCK_DGRAM
                with socket.socket(fam, kind) as s:
                    s.settimeout(2)
                    if cmd == "connect":
                        s.connect((host, port))
                    else:
                        s.sendto(b"x", (host, port))
                out = {"ok": True}
            elif cmd == "run":
                out = {"rc": subprocess.run(args).returncode}
            else:
                out = {"error": f"unknown command {cmd}"}
        except OSError as e:
            out = {"errno": e.errno, "error": str(e)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
