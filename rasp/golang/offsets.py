"""Struct field offsets the uprobe programs need, from DWARF when the binary has it.

The BPF side follows pointers into Go structs (the request's method, URL and remote address,
the command's path and argv). Field offsets are a property of the Go version that built the
binary, so they are read from the binary's DWARF when it has some (not `-ldflags=-w`), else
taken from a per-version table checked against DWARF of the versions we build here.
`FieldOffsets.source` says which ("dwarf" or "table go1.x").
"""

from __future__ import annotations

from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

#: (struct, field) pairs the programs read; the DWARF type names as the Go linker writes them
FIELDS: dict[str, tuple[str, str]] = {
    "req_method": ("net/http.Request", "Method"),
    "req_url": ("net/http.Request", "URL"),
    "req_host": ("net/http.Request", "Host"),
    "req_remote": ("net/http.Request", "RemoteAddr"),
    "url_path": ("net/url.URL", "Path"),
    "url_query": ("net/url.URL", "RawQuery"),
    "cmd_path": ("os/exec.Cmd", "Path"),
    "cmd_args": ("os/exec.Cmd", "Args"),
    # the sink-side check that a goroutine's request is still live (gorasp.h go_req_live)
    "resp_req": ("net/http.response", "req"),
    "resp_done": ("net/http.response", "handlerDone"),
    "g_goid": ("runtime.g", "goid"),
}

#: fields the BPF side treats as optional: 0 there means "unknown, skip the check"
OPTIONAL = ("resp_done", "g_goid")

#: Offsets by Go minor version (amd64). go1.19 and go1.26 are checked against DWARF of the
#: binaries we build (tests/unit/test_go_symbols.py; go1.19 from Debian's golang-1.19-go).
#: Earlier versions follow their sources' field order: http.Request up to RemoteAddr and
#: os/exec.Cmd's Path/Args have not moved since 1.17; url.URL was Scheme, Opaque, User, Host,
#: Path, RawPath, [OmitHost (1.19+),] ForceQuery, RawQuery (96: the bools share one word), and
#: go1.26 moved RawQuery before RawPath (88). http.response starts with conn, req in every
#: version. response.handlerDone (160) and runtime.g's goid (152) are the same in 1.19 and
#: 1.26, but fields around both moved in between (g's gobuf lost `ret`, gained `syscallbp`),
#: so versions not built here leave them 0: the liveness check is skipped there (a sink in
#: a ConnState hook may then carry the previous request). A binary with DWARF never uses this.
_TABLE_1_17: dict[str, int] = {
    "req_method": 0,
    "req_url": 16,
    "req_host": 128,
    "req_remote": 176,
    "url_path": 56,
    "url_query": 96,
    "cmd_path": 0,
    "cmd_args": 16,
    "resp_req": 8,
    "resp_done": 0,
    "g_goid": 0,
}
_VERIFIED = {"resp_done": 160, "g_goid": 152}
_TABLE_1_19 = {**_TABLE_1_17, **_VERIFIED}
_TABLE_1_26 = {**_TABLE_1_17, **_VERIFIED, "url_query": 88}
#: go1.27 (checked by hand against DWARF of a GOTOOLCHAIN=go1.27.3 build, not by the tests:
#: that toolchain is a 76 MB download) grew http.response: handlerDone at 168
_TABLE_1_27 = {**_TABLE_1_26, "resp_done": 168}
TABLE: dict[int, dict[str, int]] = {
    **{minor: _TABLE_1_17 for minor in range(17, 26)},
    19: _TABLE_1_19,
    26: _TABLE_1_26,
    27: _TABLE_1_27,
}
#: the versions whose table row the tests compare with DWARF of a binary built here
VERIFIED = (19, 26)


@dataclass
class FieldOffsets:
    values: dict[str, int]
    source: str  # "dwarf", "table go1.N", or "table go1.N (nearest)"


def from_dwarf(elf: ELFFile) -> dict[str, int]:
    """The offsets found in DWARF (possibly fewer than FIELDS when a type is absent: a binary
    without net/http has no http.Request)."""
    wanted_types = {t for t, _ in FIELDS.values()}
    # the Go linker writes type DIEs into the "runtime" compile unit(s); older linkers put
    # some in the defining package's unit. The runtime units first, the packages' only for
    # what is still missing: parsing a unit's DIEs is the cost (net/http's alone ~1 s), and
    # the agent does this on every attach
    packages = {t.rsplit(".", 1)[0] for t in wanted_types} - {"runtime"}
    members: dict[tuple[str, str], int] = {}
    dwarf = elf.get_dwarf_info()

    def complete() -> bool:
        return all(tf in members for tf in FIELDS.values())

    for units in ({"runtime"}, packages):
        for cu in dwarf.iter_CUs():
            if complete():
                break
            top = cu.get_top_DIE()
            name = top.attributes.get("DW_AT_name")
            # Go emits one compile unit per package, named by its import path
            if name is None or name.value.decode("utf-8", "replace") not in units:
                continue
            for die in top.iter_children():
                if die.tag != "DW_TAG_structure_type":
                    continue
                tname = die.attributes.get("DW_AT_name")
                if tname is None or tname.value.decode() not in wanted_types:
                    continue
                for m in die.iter_children():
                    if m.tag == "DW_TAG_member" and "DW_AT_data_member_location" in m.attributes:
                        field = m.attributes["DW_AT_name"].value.decode()
                        members[(tname.value.decode(), field)] = m.attributes[
                            "DW_AT_data_member_location"
                        ].value
    return {k: members[tf] for k, tf in FIELDS.items() if tf in members}


def from_table(minor: int) -> FieldOffsets:
    if minor in TABLE:
        return FieldOffsets(dict(TABLE[minor]), f"table go1.{minor}")
    nearest = max(TABLE) if minor > max(TABLE) else min(TABLE)
    # a version nobody checked: no liveness check rather than one reading the wrong field
    values = {**TABLE[nearest], **dict.fromkeys(OPTIONAL, 0)}
    return FieldOffsets(values, f"table go1.{nearest} (nearest to go1.{minor})")


def resolve(path: str, minor: int, has_dwarf: bool) -> FieldOffsets:
    """DWARF when present and complete, else the table for Go 1.`minor`."""
    if has_dwarf:
        with open(path, "rb") as f:
            found = from_dwarf(ELFFile(f))
        if len(found) == len(FIELDS):
            return FieldOffsets(found, "dwarf")
        table = from_table(minor)
        table.values.update(found)
        table.source += f" + dwarf for {len(found)} of {len(FIELDS)}"
        return table
    return from_table(minor)
