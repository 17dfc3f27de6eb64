"""A table helper speaking OpenSMTPD 7.x's line protocol, for the proc tests.

    python proc_helper.py DATA.json [MODE]

DATA.json holds {"services": [...], "map": {key: value}, "sources": [...]}
and is re-read on `update` (a file that does not parse is an `error` naming
file:line, and the old data stays).  MODE makes it misbehave, for the
failure tests: `exit` exits at the first request, `garble` answers it with
garbage, `stall` never answers, `wrongid` answers with another id,
`slowstart` never finishes the handshake, `badservice` registers a service
that does not exist.  MODE `@FILE` reads the mode from FILE at each
request, so a test can make a running helper misbehave and then heal.
Like a real helper, it answers requests as they come.
"""

import json
import sys
import time


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main():
    path = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    data = load(path)
    config = {}
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line == "config|ready":
            break
        _, key, value = line.split("|", 2)
        config[key] = value
    assert config.get("protocol") == "0.1", config
    if mode == "slowstart":
        time.sleep(3600)
    if mode == "badservice":
        print("register|teleport", flush=True)
    for service in data["services"]:
        print(f"register|{service}")
    print("register|ready", flush=True)
    cursor = 0
    for line in sys.stdin:
        line = line.rstrip("\n")
        fields = line.split("|", 7)
        assert fields[0] == "table" and fields[1] == "0.1" and fields[3] == config["tablename"]
        op = fields[4]
        if mode.startswith("@"):
            with open(mode[1:], encoding="utf-8") as f:
                now = f.read().strip()
        else:
            now = mode
        if now == "exit":
            sys.exit(3)
        if now == "stall":
            time.sleep(3600)
        if op == "update":
            ident = fields[5]
            try:
                data = load(path)
                reply = "ok"
            except json.JSONDecodeError as e:
                reply = f"error|{path}:{e.lineno}: {e.msg}"
            print(f"update-result|{ident}|{reply}", flush=True)
            continue
        service, ident = fields[5], fields[6]
        if now == "garble":
            print("lookup-result is what you wanted?", flush=True)
            continue
        if now == "wrongid":
            ident = "ffffffff" if ident != "ffffffff" else "00000000"
        if op == "fetch":
            sources = data.get("sources", [])
            if not sources:
                print(f"fetch-result|{ident}|not-found", flush=True)
            else:
                print(f"fetch-result|{ident}|found|{sources[cursor % len(sources)]}", flush=True)
                cursor += 1
            continue
        key = fields[7]
        value = data["map"].get(key)
        if value is None:
            print(f"{op}-result|{ident}|not-found", flush=True)
        elif op == "check":
            print(f"check-result|{ident}|found", flush=True)
        else:
            print(f"lookup-result|{ident}|found|{value}", flush=True)


if __name__ == "__main__":
    main()
