"""Bring the queue back after a stop, a crash or a power cut.

Runs once, before the daemon accepts mail, in a thread.  What it may find and
what it does (docs/architecture.md, The queue):

- `incoming/<msgid>`: a message never acknowledged with 250; deleted, the
  client was told nothing and will retry.
- an envelope file that fails validation (torn, bit-flipped, unknown
  version), or whose name does not match its content: moved to
  `corrupt/<msgid>/` with a warning, never guessed at; when no good envelope
  of a message is left, its message follows, so an administrator can still
  recover the mail.
- a message whose envelope files are all gone (a crash while removing the
  last one): removed, it was delivered.
- envelopes whose message file is gone: moved to `corrupt/`, undeliverable.
- `<evpid>.tmp`: an update that never reached its rename; the previous
  envelope file is intact, so the temp file is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from postillion.queue import layout
from postillion.queue.envelope import Envelope, EnvelopeCorrupt, format_evpid, format_msgid, parse_evpid, parse_msgid

log = logging.getLogger("postillion.queue")


def recover(root: Path, fsync_dir: Callable[[Path], None],
            clean_incoming: bool = True) -> tuple[list[Envelope], set[str]]:
    """Create the layout, clean it, and return every committed envelope and
    the bucket directories that exist (made durable here).  `incoming/` is
    emptied only with `clean_incoming` (no other process may be receiving)."""
    incoming, queue, corrupt = root / layout.INCOMING, root / layout.QUEUE, root / layout.CORRUPT
    for path in (root, incoming, queue, corrupt):
        path.mkdir(mode=layout.DIR_MODE, parents=True, exist_ok=True)
    fsync_dir(root)
    leftovers = sorted(os.listdir(incoming)) if clean_incoming else []
    for name in leftovers:
        log.info("queue incoming-removed msgid=%s reason=never-acknowledged", name)
        layout.remove_any(incoming / name)
    if leftovers:
        fsync_dir(incoming)
    envelopes: list[Envelope] = []
    buckets: set[str] = set()
    for bucket in sorted(os.listdir(queue)):
        bucket_dir = queue / bucket
        if not layout.is_bucket(bucket) or not bucket_dir.is_dir():
            log.warning("queue unexpected path=%s", bucket_dir)
            continue
        buckets.add(bucket)
        for name in sorted(os.listdir(bucket_dir)):
            try:
                msgid = parse_msgid(name)
            except ValueError:
                msgid = None
            if msgid is None or layout.bucket(msgid) != bucket or not (bucket_dir / name).is_dir():
                log.warning("queue unexpected path=%s", bucket_dir / name)
                continue
            envelopes.extend(_load_message(msgid, bucket_dir / name, corrupt))
    fsync_dir(queue)
    return envelopes, buckets


def _load_message(msgid: int, path: Path, corrupt: Path) -> list[Envelope]:
    names = os.listdir(path)
    good: list[Envelope] = []
    bad: list[tuple[str, str]] = []
    for name in names:
        if name == layout.MESSAGE:
            continue
        if name.endswith(layout.TMP_SUFFIX):
            (path / name).unlink()
            continue
        try:
            evpid = parse_evpid(name)
        except ValueError:
            bad.append((name, "unexpected file"))
            continue
        try:
            envelope = Envelope.from_bytes((path / name).read_bytes())
        except EnvelopeCorrupt as e:
            bad.append((name, str(e)))
            continue
        except OSError as e:
            bad.append((name, f"unreadable: {e}"))
            continue
        if envelope.id != evpid or envelope.msgid != msgid:
            bad.append((name, "file name does not match its content"))
            continue
        good.append(envelope)
    has_message = layout.MESSAGE in names
    if not has_message and (good or bad):
        bad.extend((format_evpid(e.id), "message file missing") for e in good)
        good = []
    for name, reason in bad:
        _to_corrupt(corrupt, msgid, path / name, reason)
    if not good:
        if has_message and bad:
            _to_corrupt(corrupt, msgid, path / layout.MESSAGE, "no valid envelope left")
        elif has_message:
            log.info("queue message-removed msgid=%08x reason=no-envelope", msgid)
        shutil.rmtree(path)
    return good


def _to_corrupt(corrupt: Path, msgid: int, path: Path, reason: str) -> None:
    target_dir = corrupt / format_msgid(msgid)
    target_dir.mkdir(mode=layout.DIR_MODE, exist_ok=True)
    target = target_dir / path.name
    n = 0
    while target.exists():
        n += 1
        target = target_dir / f"{path.name}.{n}"
    os.rename(path, target)
    log.warning("queue corrupt path=%s moved-to=%s reason=%r", path, target, reason)
