// Command vulnapp is the Go victim of the Go probe's tests: net/http with the same deliberately
// vulnerable endpoints as the other runtimes' apps (tests/apps/python/http_server_app.py), each
// passing a query parameter straight to a sink the probe hooks. Loopback only.
//
//	/health            200 "ok" (no sink: the throughput benchmark's request)
//	/exec?cmd=         exec.Command("sh", "-c", cmd).Run()          os/exec.(*Cmd).Start
//	/read?path=        os.ReadFile(path)                             os.OpenFile
//	/write?path=&data= os.WriteFile, then os.Rename(path, path+".1"), os.Remove
//	/fetch?url=        http.Get(url)                                 net.(*Dialer).DialContext
//	/connect?host=&port= net.Dial("tcp", host:port)                  DialContext, lookups
//	/lookup?host=      net.LookupHost(host)                          net.(*Resolver).LookupHost
//	/sql?name=         db.Query("SELECT ... '" + name + "'")        database/sql.(*DB).QueryContext
//	/sqlexec?name=     db.Exec, and Conn/Tx variants with ?via=conn|tx
//	/spin?n=           n x os.Remove of a missing file; replies the ns it took (the
//	                   benchmark's per-hit cost: bench/go_overhead.py)
//	/spawn?path=       os.Remove(path) on a goroutine the handler starts (no request context)
//
// -idle-remove PATH: a Server.ConnState hook calls os.Remove(PATH) each time a connection goes
// idle, i.e. on the connection's goroutine after each of its requests (the Go probe must not
// give that call the request that just ended).
// Builds with Go 1.19 (Debian's) as well as the machine's Go: no newer language features.
//
// Prints "listening <port>" once it serves (port 0 picks a free one: -addr 127.0.0.1:0).
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"

	_ "rampart/tests/vulnapp/fakedb"
)

var db *sql.DB

func reply(w http.ResponseWriter, err error, text string) {
	if err != nil {
		w.WriteHeader(500)
		fmt.Fprintf(w, "error: %v", err)
		return
	}
	io.WriteString(w, text)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	idleRemove := flag.String("idle-remove", "", "os.Remove this path whenever a connection goes idle")
	flag.Parse()
	var err error
	if db, err = sql.Open("fakedb", ""); err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/exec", func(w http.ResponseWriter, r *http.Request) {
		out, err := exec.Command("sh", "-c", r.URL.Query().Get("cmd")).Output()
		reply(w, err, string(out))
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(r.URL.Query().Get("path"))
		reply(w, err, string(data))
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		err := os.WriteFile(p, []byte(r.URL.Query().Get("data")), 0o600)
		if err == nil {
			err = os.Rename(p, p+".1")
		}
		if err == nil {
			err = os.Remove(p + ".1")
		}
		if err == nil {
			err = os.RemoveAll(p + ".d")
		}
		reply(w, err, "written")
	})
	mux.HandleFunc("/fetch", func(w http.ResponseWriter, r *http.Request) {
		client := http.Client{Timeout: 3 * time.Second}
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err == nil {
			resp.Body.Close()
		}
		reply(w, err, "fetched")
	})
	mux.HandleFunc("/connect", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		c, err := net.DialTimeout("tcp", net.JoinHostPort(q.Get("host"), q.Get("port")), 3*time.Second)
		if err == nil {
			c.Close()
		}
		reply(w, err, "connected")
	})
	mux.HandleFunc("/lookup", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.LookupHost(r.URL.Query().Get("host"))
		reply(w, err, fmt.Sprint(addrs))
	})
	mux.HandleFunc("/sql", func(w http.ResponseWriter, r *http.Request) {
		q := "SELECT id FROM users WHERE name = '" + r.URL.Query().Get("name") + "'"
		var echo string
		err := db.QueryRow(q).Scan(&echo)
		reply(w, err, echo)
	})
	mux.HandleFunc("/sqlexec", func(w http.ResponseWriter, r *http.Request) {
		q := "UPDATE users SET seen = 1 WHERE name = '" + r.URL.Query().Get("name") + "'"
		ctx := context.Background()
		var err error
		switch r.URL.Query().Get("via") {
		case "conn":
			var c *sql.Conn
			if c, err = db.Conn(ctx); err == nil {
				_, err = c.ExecContext(ctx, q)
				c.Close()
			}
		case "tx":
			var tx *sql.Tx
			if tx, err = db.BeginTx(ctx, nil); err == nil {
				_, err = tx.ExecContext(ctx, q)
				tx.Commit()
			}
		default:
			_, err = db.Exec(q)
		}
		reply(w, err, "executed")
	})
	mux.HandleFunc("/spin", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		start := time.Now()
		for i := 0; i < n; i++ {
			os.Remove("/nonexistent/rampart-spin")
		}
		fmt.Fprint(w, time.Since(start).Nanoseconds())
	})
	mux.HandleFunc("/spawn", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		done := make(chan struct{})
		go func() {
			os.Remove(path)
			close(done)
		}()
		<-done
		io.WriteString(w, "spawned")
	})
	srv := &http.Server{Handler: mux}
	if *idleRemove != "" {
		srv.ConnState = func(c net.Conn, s http.ConnState) {
			if s == http.StateIdle {
				os.Remove(*idleRemove)
			}
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	srv.Serve(ln)
}
