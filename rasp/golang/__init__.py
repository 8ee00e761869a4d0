"""The Go probe: eBPF uprobes on Go standard-library functions, loaded by the host agent.

Frida hooks crash busy Go programs (notes/platform-facts.md), so Go is observed from the
kernel: `symbols` finds function entries, `hooks` lists what is hooked and how each record
becomes an event, `uprobes` loads the BPF object and attaches it per process. The agent side
is host_agent/goprobes.py. See docs/go-probe.md.
"""
