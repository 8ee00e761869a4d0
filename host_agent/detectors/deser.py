"""Deserialization gadgets, remote JNDI lookups, and commands run from deserialization.

Class names are what the hooks report: Python `pickle.find_class` (module, name), JVM
`ObjectInputStream.resolveClass` (class name), PHP `unserialize` (the payload: class names
appear as `O:<len>:"Class"`). The lists hold classes whose only reason to be deserialized
from untrusted input is to run code (ysoserial's and OpenRASP's blacklists)."""

from __future__ import annotations

import re

from host_agent.detectors.base import Finding

GADGETS = re.compile(
    r"^(?:"
    # Python: pickle resolving a callable that runs code; apps pickle data (builtins.list,
    # collections.OrderedDict, datetime), never functions of these modules
    r"(?:os|posix|nt|subprocess|pty|commands|socket|shutil|ctypes|importlib)[ .:]"
    r"|(?:builtins|__builtin__)[ .:](?:eval|exec|compile|__import__|getattr|open|breakpoint)$"
    # JVM: ysoserial chains and friends
    r"|org\.apache\.commons\.collections4?\.functors\.(?:InvokerTransformer|ChainedTransformer"
    r"|InstantiateTransformer|ConstantTransformer)"
    r"|org\.apache\.commons\.beanutils\.BeanComparator"
    r"|com\.sun\.org\.apache\.xalan\.internal\.xsltc\.trax\.TemplatesImpl"
    r"|org\.codehaus\.groovy\.runtime\.(?:ConvertedClosure|MethodClosure)"
    r"|org\.springframework\.beans\.factory\.ObjectFactory"
    r"|com\.mchange\.v2\.c3p0\.impl\.PoolBackedDataSourceBase"
    r"|com\.sun\.rowset\.JdbcRowSetImpl"
    r"|javax\.management\.BadAttributeValueExpException"
    r"|java\.rmi\.server\.UnicastRemoteObject"
    r"|sun\.rmi\.server\.UnicastRef"
    r")",
)
_PHP_OBJECTS = re.compile(r'O:\d+:"([^"]+)"')
PHP_GADGETS = re.compile(
    r"^(?:Monolog\\Handler\\(?:SyslogUdpHandler|BufferHandler)|GuzzleHttp\\Psr7\\FnStream"
    r"|Illuminate\\Broadcasting\\PendingBroadcast|Symfony\\Component\\Process\\Process)$"
)
_JNDI_REMOTE = re.compile(r"^\s*(?:ldaps?|rmi|dns|iiop|corbaname|nis|nds)://", re.I)
# stack frames of a deserializer: a command run below one of these was not the app's choice.
# (Not Method.invoke: web frameworks call every handler through reflection.)
_DESER_FRAMES = re.compile(
    r"pickle|_pickle|ObjectInputStream\.readObject|readObject\(|XMLDecoder|yaml[./]load"
    r"|unserialize|__wakeup|__destruct|jsonpickle|marshal\.loads"
)


def check_deserialization(hook: str, args: list[str]) -> list[Finding]:
    if not args:
        return []
    name = args[0] if len(args) == 1 else f"{args[0]}.{args[1]}"
    if GADGETS.match(name) or GADGETS.match(" ".join(args[:2])):
        return [Finding("deser.gadget", "critical", "T1190", f"gadget deserialized: {name}")]
    for cls in _PHP_OBJECTS.findall(args[0]):
        if PHP_GADGETS.match(cls):
            return [Finding("deser.gadget", "critical", "T1190", f"gadget deserialized: {cls}")]
    return []


def check_naming(args: list[str]) -> list[Finding]:
    if args and _JNDI_REMOTE.match(args[0]):
        return [Finding("jndi.remote", "critical", "T1190", f"remote JNDI lookup: {args[0][:200]}")]
    return []


def check_exec_stack(stack: list[str]) -> list[Finding]:
    # one search over the joined stack: a regex call per frame cost 5 µs per process event
    m = _DESER_FRAMES.search("\n".join(stack))
    if m is None:
        return []
    text = "\n".join(stack)
    line_start = text.rfind("\n", 0, m.start()) + 1
    line_end = text.find("\n", m.end())
    frame = text[line_start : line_end if line_end >= 0 else None]
    return [
        Finding(
            "cmdi.deserialization",
            "critical",
            "T1059",
            f"command run from inside deserialization: {frame[:200]}",
        )
    ]
