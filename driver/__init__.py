"""Kernel-side collection with eBPF (docs/driver.md): BPF CO-RE programs in driver/bpf/,
their table (programs.py), the ctypes loader (loader.py over libbpf.py), the record layouts
(events.py, checked against the object's BTF by btfcheck.py), and the fallbacks without
eBPF: the proc connector (proc_connector.py) and fanotify beside it (fanotify.py)."""
