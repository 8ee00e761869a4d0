"""Kernel-side collection with eBPF (see issue 7); the loader lands here."""
