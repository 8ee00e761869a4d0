"""Server-side request forgery: a user-controlled host or URL pointing inside.

Internal targets: loopback, link-local (cloud metadata 169.254.169.254), private ranges,
unspecified, and their numeric disguises (2130706433, 0x7f000001, 0177.0.0.1); plus schemes
that are not HTTP(S) (`file:`, `gopher:`, `dict:`). Names that resolve inside are caught on
the connect event that follows, whose address is an IP (the request is still in context).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from host_agent.detectors.base import Finding, user_inputs

METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})
_ODD_SCHEMES = frozenset({"file", "gopher", "dict", "ftp", "ldap", "jar", "netdoc", "tftp"})
_HOSTPORT = re.compile(r"^\[?(?P<host>[^\]\s/]+?)\]?(?::\d+)?$")


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP from its usual and its disguised spellings (decimal, hex, octal parts)."""
    host = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums = []
    for p in parts:
        try:
            if p.startswith("0x"):
                nums.append(int(p, 16))
            elif len(p) > 1 and p.startswith("0"):
                nums.append(int(p, 8))
            else:
                nums.append(int(p, 10))
        except ValueError:
            return None
    # inet_aton rules: the last part fills the remaining bytes
    value = 0
    for n in nums[:-1]:
        if n > 255:
            return None
        value = value << 8 | n
    rest = 8 * (4 - len(nums) + 1)
    if nums[-1] >= 1 << rest:
        return None
    value = value << rest | nums[-1]
    return ipaddress.IPv4Address(value)


def internal(host: str) -> str:
    """Why `host` is internal, or ""."""
    if host.lower().rstrip(".") in METADATA_NAMES or host.lower() == "localhost":
        return f"{host} is an internal name"
    ip = parse_ip(host)
    if ip is None:
        return ""
    if str(ip) == "169.254.169.254" or str(ip) == "fd00:ec2::254":
        return f"{host} is the cloud metadata service"
    if ip.is_loopback:
        return f"{host} is loopback"
    if ip.is_link_local:
        return f"{host} is link-local"
    if ip.is_private or ip.is_unspecified:
        return f"{host} is a private address"
    return ""


def target_host(kind: str, args: list[str]) -> tuple[str, str]:
    """(scheme, host) the event connects to, from a URL or a host[:port] argument."""
    if not args:
        return "", ""
    a = args[0]
    if "://" in a:
        u = urlsplit(a)
        return u.scheme.lower(), u.hostname or ""
    m = _HOSTPORT.match(a)
    return "", m.group("host") if m else ""


def _input_host(value: str) -> str:
    """The host a parameter names: a URL's hostname, or the value itself (host[:port])."""
    if "://" in value:
        try:
            return urlsplit(value).hostname or ""
        except ValueError:
            return ""
    m = _HOSTPORT.match(value)
    return m.group("host") if m else ""


def _from_input(value: str, arg: str, host: str) -> bool:
    """Did this parameter choose where the event connects? Either it appears in the event's
    argument (a URL or host handed on as is), or the host it names is the event's host: a
    runtime resolving and connecting reports only the host of the URL it was given."""
    if value in arg:
        return True
    named = _input_host(value)
    return bool(named) and bool(host) and named.lower() == host.lower()


def check(kind: str, args: list[str], request: object) -> list[Finding]:
    scheme, host = target_host(kind, args)
    if not host and not scheme:
        return []
    for name, value in user_inputs(request):
        if not _from_input(value, args[0], host):
            continue
        if scheme in _ODD_SCHEMES:
            return [
                Finding("ssrf.scheme", "high", "T1190", f"request parameter {name!r} makes the "
                        f"app fetch a {scheme}: URL", name, value)
            ]  # fmt: skip
        why = internal(host)
        if why:
            return [
                Finding(
                    "ssrf.internal",
                    "critical" if "metadata" in why else "high",
                    "T1190",
                    f"request parameter {name!r} points the app inside: {why}",
                    name,
                    value,
                )
            ]
    return []
