// A Go process to put under kernel enforcement (tests/integration/test_enforce.py): the same
// line protocol as victim.py. Go makes raw syscalls (no libc), and exec.Command forks a child
// with a new tgid, which is why the kernel, not a hook in the process, must block.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

func answer(v map[string]any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

func fail(err error) {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		answer(map[string]any{"errno": int(errno), "error": err.Error()})
		return
	}
	answer(map[string]any{"error": err.Error()})
}

func main() {
	answer(map[string]any{"ready": true})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "connect", "udp":
			network := "tcp"
			if f[0] == "udp" {
				network = "udp"
			}
			c, err := net.DialTimeout(network, net.JoinHostPort(f[1], f[2]), 2*time.Second)
			if err != nil {
				fail(err)
				continue
			}
			if network == "udp" {
				_, err = c.Write([]byte("x"))
			}
			c.Close()
			if err != nil {
				fail(err)
				continue
			}
			answer(map[string]any{"ok": true})
		case "run":
			err := exec.Command(f[1], f[2:]...).Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				ws := ee.Sys().(syscall.WaitStatus)
				if ws.Signaled() {
					answer(map[string]any{"rc": -int(ws.Signal())})
				} else {
					answer(map[string]any{"rc": ws.ExitStatus()})
				}
			} else if err != nil {
				fail(err)
			} else {
				answer(map[string]any{"rc": 0})
			}
		default:
			answer(map[string]any{"error": "unknown command " + f[0]})
		}
	}
}
