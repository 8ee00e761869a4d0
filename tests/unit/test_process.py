"""Pure parsing in injector/process.py: container ids from cgroup paths, stat parsing."""

from __future__ import annotations

import os

import pytest

from injector import process
from injector.process import join_cmdline, read_stat

CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        (f"0::/system.slice/docker-{CID}.scope\n", CID),
        (f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope\n", CID),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CID),
        (f"0::/kubepods/burstable/pod123/crio-{CID}.scope\n", CID),
        (f"12:memory:/docker/{CID}\n11:cpu:/docker/{CID}\n", CID),
        ("0::/user.slice/user-0.slice/session-1.scope\n", ""),
        ("0::/\n", ""),
        # a 64-hex string that is part of a longer name is not an id
        (f"0::/system.slice/x{CID}y.service\n", ""),
    ],
)
def test_container_id_from_cgroup(tmp_path, monkeypatch, cgroup: str, expected: str) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "cgroup").write_text(cgroup)
    monkeypatch.setattr(process, "PROC", str(tmp_path))
    assert process.container_id(77) == expected


def test_stat_comm_with_spaces_and_parens(tmp_path, monkeypatch) -> None:
    (tmp_path / "5").mkdir()
    rest = " ".join(["S", "1"] + ["0"] * 17 + ["4242"] + ["0"] * 10)
    (tmp_path / "5" / "stat").write_text(f"5 (my (odd) comm) {rest}\n")
    monkeypatch.setattr(process, "PROC", str(tmp_path))
    assert read_stat(5) == ("my (odd) comm", "S", 1, 4242)


def test_own_process_reads_back() -> None:
    info = process.read_process(os.getpid())
    assert info.ppid == os.getppid() and info.uid == os.getuid() and not info.zombie
    assert info.exe == os.path.realpath("/proc/self/exe")


def test_cmdline_is_capped() -> None:
    assert len(join_cmdline(["x" * 5000, "y"])) == process.CMDLINE_CAP
