#!/usr/bin/env python3
"""`make conformance`: OpenSMTPD 6.8's own checker vs `postillion check`, config by config.

For every test config (tests/config/examples, tests/config/good, the bad
corpus tests/config/bad/NN-name/, and conformance/cases/*.conf, one fact
each) this runs `smtpd -n -f FILE` and `postillion check -f FILE` and
prints where they disagree on valid/invalid.  A disagreement is a bug
unless Postillion deliberately differs (docs/configuration.md): EXPLAINED maps each
known one to its reason; anything else is printed as UNEXPLAINED and the
script exits 1.

OpenSMTPD (Debian package `opensmtpd`) is installed when missing, with
/usr/sbin/policy-rc.d answering 101 so the service does not start (the
file is removed afterwards only if this script created it; one that does
not answer 101 is set aside and put back); another
process installing it at the same time is tolerated (dpkg lock waits).
Not part of `make test`: it needs the Debian package and root.

Certificates: configs name /etc/mail/certs/*.crt|.key; each run copies the
config to a temporary directory with those paths rewritten to a throwaway
self-signed pair, since smtpd -n loads the pki files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTILLION = [str(ROOT / ".venv" / "bin" / "postillion")]
POLICY = Path("/usr/sbin/policy-rc.d")

#: case name -> why Postillion deliberately differs (docs/configuration.md, section).
G2012 = "docs/configuration.md, The 2012 grammar"
DIFF = "docs/configuration.md, Differences from OpenSMTPD 6.8"
RELAY = "docs/configuration.md, Relay URLs"
LATER = "docs/configuration.md, Not supported yet"
EXPLAINED = {
    # The 2012 grammar is accepted (compiled to match rules); 6.8 removed it.
    "B-2012-virtual": f"2012 grammar, {G2012}; also `listen on all` (below)",
    "06-2012-grammar": f"2012 grammar, {G2012}",
    "differ-2012-accept": f"2012 grammar, {G2012}",
    "differ-2012-globals": "2012 global spellings expire/max-message-size/bounce-warn, "
                           "docs/configuration.md, Global options",
    "32-2012-errors": "6.8 refuses the whole 2012 grammar; Postillion finds real errors in it",
    # listen on IF accepts `all`/`egress`; smtpd-portable on Linux has no
    # interface groups and resolves interfaces at check time, Postillion at start.
    "A-modern-sqlite": f"`listen on all` ({DIFF}); Linux smtpd has no interface group `all`",
    "C-modern-virtual": f"`listen on all` ({DIFF}); Linux smtpd has no interface group `all`",
    "differ-listen-on-all": f"`listen on all` ({DIFF}); Linux smtpd has no interface group `all`",
    "differ-listen-on-egress": f"`egress` ({DIFF}); Linux smtpd has no interface groups",
    "differ-listen-on-unknown-interface": "both refuse it; OpenSMTPD says so in other words",
    # Accepted on purpose.
    "differ-hostname-statement": f"global `hostname`, {DIFF}",
    "differ-smtp-max-sessions": f"`smtp limit max-sessions[-per-ip]`, {DIFF}",
    # Labels need mandatory TLS and auth <t>; auth <t> needs a label.
    "differ-relay-label-without-tls": f"a label needs a TLS-mandatory scheme, {RELAY}",
    "differ-relay-label-without-auth": f"label without auth <t> = error, {RELAY}",
    "differ-relay-auth-without-label": f"auth <t> without label = error, {RELAY}",
    "differ-relay-unknown-scheme": f"only the listed schemes ({RELAY}); 6.8 accepts any "
                                   "text at parse time and fails at delivery",
    "differ-relay-ssl-scheme-modern": f"ssl:// is a 2012 scheme only ({G2012}: a "
                                      "scheme means what it meant in its grammar)",
    # Tables.
    "differ-duplicate-table-key": "keys equal after lowercasing = error, "
                                  "docs/configuration.md, table",
    "differ-map-for-domain": "check on a map = key exists (6.8 needs a list), "
                             "docs/tables.md, Lists and maps",
    # Refused at config time where 6.8 only finds out at delivery.
    "differ-mda-shell-pipe": "commands run without a shell, docs/configuration.md, Commands",
    "differ-unknown-format-specifier": "unknown format specifier = error, "
                                       "docs/configuration.md, Format specifiers",
    "differ-lmtp-without-port": "lmtp HOST:PORT|/socket, docs/configuration.md, action",
    "09-action-errors": f"checks at config time (mda pipe, %{{rpct}}, label rules, lmtp "
                        f"nohost), {DIFF}",
    # Not supported yet: refused, never ignored.
    "differ-srs": f"srs not supported yet, {LATER}",
    "differ-filter": f"filters not supported yet, {LATER}",
    "differ-proc": f"proc not supported yet, {LATER}",
    "differ-listen-on-socket": f"listen on socket not supported yet, {LATER}",
    "differ-proxy-v2": f"proxy-v2 not supported yet, {LATER}",
    "differ-queue-encryption": f"queue encryption not supported yet, {LATER}",
    "24-mixed-grammars-and-out-of-scope": f"mixing + not supported yet (filter, srs) + pki "
                                          f"without key, {DIFF}",
    # Careful-administrator choices OpenSMTPD's documentation leaves open (parser.py).
    "differ-several-pki": "several pki per listener (SNI), as OpenSMTPD 7.x; 6.8 allows one",
    "differ-no-rules": "a config without rules is valid (every recipient gets 550 5.7.1; "
                       "tables-only configs serve `postillion table lookup`); 6.8 exits "
                       "\"no rules, nothing to do\"",
    "differ-unquoted-sub-addr-delim": "6.8's lexer needs `-` quoted; Postillion takes one "
                                      "bare punctuation character",
    "differ-max-rcpt-zero": "limits are at least 1 (0 recipients would refuse all mail)",
    "differ-five-warn-intervals": "at most 4 warn intervals (6.8 ignores the rest), "
                                  "docs/configuration.md, Global options",
    "20-global-options": f"at most 4 warn intervals, limits >= 1, queue encryption ({LATER})",
}


def sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def find_smtpd() -> str | None:
    for candidate in ("/usr/sbin/smtpd", shutil.which("smtpd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_opensmtpd() -> str:
    """smtpd, installed from Debian if missing, with service start-up disabled."""
    found = find_smtpd()
    if found:
        return found
    print("installing Debian package opensmtpd (service start disabled)", file=sys.stderr)
    created = False
    saved = POLICY.with_name("policy-rc.d.postillion-saved")
    replaced = POLICY.exists() and "exit 101" not in POLICY.read_text(errors="replace")
    if replaced:   # someone's policy that lets services start: set it aside meanwhile
        subprocess.run([*sudo(), "mv", str(POLICY), str(saved)], check=True)
    if not POLICY.exists():
        subprocess.run([*sudo(), "sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {POLICY}"
                                             f" && chmod 755 {POLICY}"], check=True)
        created = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = [*sudo(), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
           "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "opensmtpd"]
    try:
        for attempt in range(3):
            result = subprocess.run(apt, env=env, capture_output=True, text=True)
            if result.returncode == 0 or find_smtpd():
                break
            if attempt == 0:   # stale package lists
                subprocess.run([*sudo(), "apt-get", "-o", "DPkg::Lock::Timeout=600",
                                "update", "-q"], capture_output=True)
            else:              # another installer (dpkg lock): wait and retry
                time.sleep(10)
        else:
            sys.exit(f"conformance: cannot install opensmtpd:\n{result.stderr}")
    finally:
        if created:
            subprocess.run([*sudo(), "rm", "-f", str(POLICY)])
        if replaced:
            subprocess.run([*sudo(), "mv", str(saved), str(POLICY)])
    found = find_smtpd()
    if not found:
        sys.exit("conformance: opensmtpd installed but no smtpd binary found")
    return found


def make_certs(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.example.org", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


CERT_PATH = re.compile(r"/etc/mail/certs/[A-Za-z0-9_.-]+\.(crt|key)")


def cases() -> list[tuple[str, Path, str]]:
    """(name, directory to copy, file name inside it)."""
    out = []
    for pattern in ("tests/config/examples/*.conf", "tests/config/good/*.conf",
                    "conformance/cases/*.conf"):
        for path in sorted(ROOT.glob(pattern)):
            out.append((path.stem, path, path.name))
    for directory in sorted((ROOT / "tests/config/bad").iterdir()):
        if (directory / "smtpd.conf").exists():
            out.append((directory.name, directory, "smtpd.conf"))
    return out


def stage(source: Path, work: Path, cert: Path, key: Path) -> Path:
    """Copy a case (file or directory) into `work`, certificate paths rewritten."""
    target = work / source.name
    if source.is_dir():
        shutil.copytree(source, target)
        files = [p for p in target.rglob("*") if p.is_file()]
    else:
        shutil.copy(source, target)
        files = [target]
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue   # the bad-UTF-8 case stays byte for byte
        rewritten = CERT_PATH.sub(lambda m: str(key if m.group(1) == "key" else cert), text)
        if rewritten != text:
            path.write_text(rewritten)
    return target


#: What `postillion check` says of an option it parses but the runtime
#: refuses: the grammar agrees with OpenSMTPD's, the runtime is behind.
NOT_IMPLEMENTED = "is not implemented by the runtime yet"


def run(argv: list[str], cwd: Path) -> tuple[bool, str, bool]:
    """(valid, why, only_not_implemented) of one checker's verdict."""
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                                errors="replace")
    except subprocess.TimeoutExpired:
        return False, "timeout", False
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "warning:" not in line and "no rules, nothing to do" not in line
             and line.strip() not in ("configuration OK",)]
    runtime_only = bool(lines) and all(NOT_IMPLEMENTED in line for line in lines)
    return result.returncode == 0, "; ".join(lines[:3]), runtime_only


def main() -> int:
    smtpd = install_opensmtpd()
    print(f"smtpd: {smtpd}; postillion: {POSTILLION[0]}")
    unexplained = agreed = explained = 0
    with tempfile.TemporaryDirectory(prefix="postillion-conformance-") as tmp:
        work = Path(tmp)
        cert, key = make_certs(work)
        for name, source, file_name in cases():
            case_dir = work / "cases" / name
            case_dir.mkdir(parents=True)
            staged = stage(source, case_dir, cert, key)
            directory = staged if staged.is_dir() else staged.parent
            ok_smtpd, why_smtpd, _ = run([smtpd, "-n", "-f", file_name], directory)
            ok_ours, why_ours, runtime_only = run([*POSTILLION, "check", "-f", file_name],
                                                  directory)
            verdict = lambda ok: "valid" if ok else "invalid"  # noqa: E731
            if ok_smtpd == ok_ours:
                agreed += 1
                print(f"  agree     {name:40} both {verdict(ok_ours)}")
                continue
            reason = EXPLAINED.get(name)
            if reason is None and ok_smtpd and runtime_only:
                # check refuses what run would: the grammar itself agrees.
                reason = "valid grammar; postillion run does not implement it yet"
            if reason:
                explained += 1
                tag = "differ"
            else:
                unexplained += 1
                tag = "UNEXPLAINED"
            print(f"  {tag:9} {name:40} smtpd {verdict(ok_smtpd)}, postillion {verdict(ok_ours)}")
            if reason:
                print(f"            why: {reason}")
            if not ok_smtpd:
                print(f"            smtpd: {why_smtpd}")
            if not ok_ours:
                print(f"            postillion: {why_ours}")
    print(f"{agreed} agree, {explained} differ on purpose, {unexplained} unexplained")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
