// Command sleeper is a Go victim that does nothing but stay alive, so tests can
// inspect a real Go process (runtime detection, symbol resolution).
package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	fmt.Println("ready")
	_ = os.Stdout.Sync()
	for {
		time.Sleep(time.Second)
	}
}
