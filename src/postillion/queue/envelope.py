"""One envelope: a single delivery of a queued message to one final recipient.

An envelope is what the queue promises to deliver after the session sent
`250`; it is written to disk next to the message and rewritten after every
attempt (docs/architecture.md).  Fields keep OpenSMTPD 6.8's names, Python-ised (`-` ->
`_`); on disk they are one JSON object with the dashed names.

The file format is self-validating because a crash, a full disk or a bad
sector must never make us half-read an envelope and deliver to the wrong
address or drop a field: the JSON line is followed by a `sha256=<hex>` line
over it, and a `version` field says which layout the JSON has.  Anything else
(truncated, torn, bit-flipped, unknown version, wrong types) raises
`EnvelopeCorrupt`; the store then moves the file to `corrupt/` and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

VERSION: Final = 1
"""Layout of the JSON object; bump it when a field changes meaning."""

DEFAULT_TTL: Final = 4 * 86400.0
"""Seconds an envelope is retried before it expires (docs/architecture.md, The queue)."""

TYPES: Final = frozenset({"mda", "mta", "bounce"})
FLAGS: Final = frozenset({"authenticated", "bounce", "internal", "tls", "smtputf8"})
DSN_NOTIFY: Final = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})
DSN_RET: Final = frozenset({"", "FULL", "HDRS"})
BOUNCE_TYPES: Final = frozenset({"", "failed", "delayed", "delivered", "relayed"})
ESC_CLASSES: Final = frozenset({0, 2, 4, 5})

_CHECKSUM_PREFIX: Final = b"sha256="
_FORBIDDEN_CHARS: Final = frozenset("\r\n\x00")


class EnvelopeCorrupt(ValueError):
    """An envelope file that cannot be trusted: torn, truncated, altered or
    of an unknown version.  Never half-read: the whole file is refused."""


def new_msgid() -> int:
    """A random 32-bit message id, never 0 (shown as `%08x`)."""
    while True:
        msgid = secrets.randbits(32)
        if msgid:
            return msgid


def new_evpid(msgid: int) -> int:
    """An envelope id: msgid in the top 32 bits, random low 32 bits, never 0."""
    _check_msgid(msgid)
    while True:
        low = secrets.randbits(32)
        if low:
            return msgid << 32 | low


def format_msgid(msgid: int) -> str:
    return f"{msgid:08x}"


def format_evpid(evpid: int) -> str:
    return f"{evpid:016x}"


def parse_msgid(text: str) -> int:
    """Parse `%08x`; ValueError unless exactly 8 lower-case hex digits."""
    return _parse_hex(text, 8)


def parse_evpid(text: str) -> int:
    """Parse `%016x`; ValueError unless exactly 16 lower-case hex digits."""
    return _parse_hex(text, 16)


def _parse_hex(text: str, width: int) -> int:
    if len(text) != width or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"not a {width}-digit hex id: {text!r}")
    return int(text, 16)


def _check_msgid(msgid: int) -> None:
    if type(msgid) is not int or not 0 < msgid < 1 << 32:
        raise ValueError(f"msgid out of range: {msgid!r}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One delivery of message `msgid` to `dest`, with its retry state.

    `sender` is "" for the null sender `<>`; `rcpt` is the address as the
    client gave it, `dest` the final one after expansion.  Times are epoch
    seconds; `ttl` is relative to `ctime`.  `esc_class` (0 unset, 2, 4, 5)
    and `esc_code` ("x.y.z") record the outcome of the last attempt, and
    `errorline` its reply text, for `show queue` and the bounce.
    A local envelope is delivered as `mda_user` by its action's method,
    unless `mda_exec` holds the alias or `.forward` target that named it
    (`|command`, `/path/` a Maildir, `/path` an mbox file); then an empty
    `mda_user` means an alias table named it, and it runs as the queue user
    (docs/tables.md, Alias targets).
    Built only valid: a bad field raises ValueError (TypeError for a type).
    """

    id: int
    msgid: int
    dispatcher: str
    rcpt: str
    dest: str
    type: Literal["mda", "mta", "bounce"] = "mda"
    tag: str = ""
    smtpname: str = ""
    helo: str = ""
    hostname: str = ""
    username: str = ""
    sockaddr: str = "local"
    sender: str = ""
    ctime: float = field(default_factory=time.time)
    last_try: float = 0.0
    last_bounce: float = 0.0
    ttl: float = DEFAULT_TTL
    retry: int = 0
    flags: frozenset[str] = frozenset()
    dsn_notify: frozenset[str] = frozenset()
    dsn_ret: str = ""
    dsn_envid: str = ""
    dsn_orcpt: str = ""
    esc_class: int = 0
    esc_code: str = ""
    errorline: str = ""
    mda_exec: str = ""
    mda_subaddress: str = ""
    mda_user: str = ""
    bounce_type: str = ""
    bounce_delay: float = 0.0
    bounce_ttl: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flags", "dsn_notify"):
            value = getattr(self, name)
            if isinstance(value, (set, list, tuple)):
                object.__setattr__(self, name, frozenset(value))
        for name in ("ctime", "last_try", "last_bounce", "ttl", "bounce_delay", "bounce_ttl"):
            if type(getattr(self, name)) is int:
                object.__setattr__(self, name, float(getattr(self, name)))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        _check_msgid(self.msgid)
        if not 0 < self.id < 1 << 64 or self.id >> 32 != self.msgid or not self.id & 0xFFFFFFFF:
            raise ValueError(f"evpid {self.id:x} does not belong to msgid {self.msgid:08x}")
        if self.type not in TYPES:
            raise ValueError(f"unknown envelope type: {self.type!r}")
        if not self.dispatcher:
            raise ValueError("envelope without a dispatcher")
        if self.retry < 0 or self.ttl < 0:
            raise ValueError("retry and ttl must not be negative")
        _check_subset("flags", self.flags, FLAGS)
        _check_subset("dsn_notify", self.dsn_notify, DSN_NOTIFY)
        if self.dsn_ret not in DSN_RET:
            raise ValueError(f"unknown dsn_ret: {self.dsn_ret!r}")
        if self.bounce_type not in BOUNCE_TYPES:
            raise ValueError(f"unknown bounce_type: {self.bounce_type!r}")
        if self.esc_class not in ESC_CLASSES:
            raise ValueError(f"unknown esc_class: {self.esc_class!r}")

    @classmethod
    def new(cls, msgid: int, **fields: Any) -> Envelope:
        """An envelope of message `msgid` with a fresh random evpid.

        Prefer `Incoming.envelope()`, which also keeps evpids unique within
        the message."""
        return cls(id=new_evpid(msgid), msgid=msgid, **fields)

    @property
    def expires(self) -> float:
        """Epoch second at which the envelope expires and is bounced."""
        return self.ctime + self.ttl

    def replace(self, **changes: Any) -> Envelope:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_bytes(self) -> bytes:
        """The file content: one JSON object line, then `sha256=<hex>` over it."""
        obj: dict[str, Any] = {"version": VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "id":
                value = format_evpid(value)
            elif f.name == "msgid":
                value = format_msgid(value)
            elif isinstance(value, frozenset):
                value = sorted(value)
            obj[f.name.replace("_", "-")] = value
        body = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii") + b"\n"
        return body + _CHECKSUM_PREFIX + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse a file written by `to_bytes`; EnvelopeCorrupt on any doubt."""
        if not data.endswith(b"\n"):
            raise EnvelopeCorrupt("truncated: no final newline")
        body, sep, trailer = data[:-1].rpartition(b"\n")
        if not sep or not trailer.startswith(_CHECKSUM_PREFIX):
            raise EnvelopeCorrupt("no checksum line")
        body += b"\n"
        digest = hashlib.sha256(body).hexdigest().encode("ascii")
        if not hmac.compare_digest(trailer[len(_CHECKSUM_PREFIX):], digest):
            raise EnvelopeCorrupt("checksum mismatch")
        try:
            obj = json.loads(body, parse_constant=_refuse_constant)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise EnvelopeCorrupt(f"bad JSON: {e}") from None
        if not isinstance(obj, dict):
            raise EnvelopeCorrupt("not a JSON object")
        if obj.pop("version", None) != VERSION:
            raise EnvelopeCorrupt("unknown or missing version")
        try:
            return cls(**_fields_from_json(obj))
        except (TypeError, ValueError) as e:
            raise EnvelopeCorrupt(str(e)) from None


_FIELDS: Final = {f.name.replace("_", "-"): f for f in dataclasses.fields(Envelope)}
_REQUIRED: Final = frozenset({"id", "msgid", "dispatcher", "rcpt", "dest", "ctime", "type"})


def _fields_from_json(obj: dict[str, Any]) -> dict[str, Any]:
    unknown = obj.keys() - _FIELDS.keys()
    if unknown:
        raise EnvelopeCorrupt(f"unknown fields: {', '.join(sorted(unknown))}")
    missing = _REQUIRED - obj.keys()
    if missing:
        raise EnvelopeCorrupt(f"missing fields: {', '.join(sorted(missing))}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _FIELDS[key].name
        if name == "id":
            value = parse_evpid(_str(value))
        elif name == "msgid":
            value = parse_msgid(_str(value))
        elif name in ("flags", "dsn_notify"):
            if not isinstance(value, list):
                raise EnvelopeCorrupt(f"{key}: not a list")
            value = frozenset(value)
        out[name] = value
    return out


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise EnvelopeCorrupt("an id is not a string")
    return value


def _refuse_constant(name: str) -> Any:
    raise EnvelopeCorrupt(f"non-finite number {name}")


def _field_type(f: dataclasses.Field[Any]) -> type:
    annotation = str(f.type)
    if annotation.startswith("frozenset"):
        return frozenset
    if annotation.startswith("Literal"):
        return str
    return {"int": int, "str": str, "float": float}[annotation]


_FIELD_TYPES: Final = {f.name: _field_type(f) for f in dataclasses.fields(Envelope)}


def _check_type(name: str, value: Any) -> None:
    expected = _FIELD_TYPES[name]
    if expected is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise TypeError(f"{name}: expected a finite number, got {value!r}")
    elif type(value) is not expected:  # excludes bool for int
        raise TypeError(f"{name}: expected {expected.__name__}, got {type(value).__name__}")
    elif expected is str:
        if _FORBIDDEN_CHARS.intersection(value):
            raise ValueError(f"{name}: CR, LF or NUL in value")
    elif expected is frozenset:
        if not all(isinstance(item, str) for item in value):
            raise TypeError(f"{name}: expected strings")


def _check_subset(name: str, value: frozenset[str], allowed: frozenset[str]) -> None:
    unknown = value - allowed
    if unknown:
        raise ValueError(f"{name}: unknown values {sorted(unknown)}")
