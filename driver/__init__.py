"""Kernel-side collection with eBPF (docs/driver.md): BPF CO-RE programs in driver/bpf/,
their table (programs.py), the ctypes loader (loader.py over libbpf.py), the record layouts
(events.py, checked against the object's BTF by btfcheck.py), and the proc-connector
fallback (proc_connector.py)."""
