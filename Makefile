# Two commands: `make run` and `make test`.  Everything else is set up by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-deps system-user clean bench man

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,speed]'
	touch $(STAMP)

## make run: start the daemon in the foreground on the embedded demo config (./var)
##   make run PORT=2526        another port
##   make run ARGS="-v"        more options for `postillion run`
PORT ?= 2525
ARGS ?=
run: $(STAMP) system-user
	$(BIN)/postillion run --demo -d -D port=$(PORT) $(ARGS)

## make test: install what the tests need (Debian packages included) and run them all
test: $(STAMP) test-deps system-user
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Debian packages the tests drive: swaks as a real peer, sqlite3 and openssl as the
# README's blocks call them (tests/docs), passwd (useradd/chpasswd/userdel) for
# the system accounts AUTH is tested on, strace for the fsync-before-250 test,
# python3-venv for the system-wide install that tests run as a normal user
# (tests/sysvenv.py), dnsmasq-base as the loopback DNS server of the MTA's
# tests (tests/dnsserver.py; the binary alone: no service starts, no
# resolv.conf is touched), slapd and ldap-utils for the ldap table's tests
# (tests/ldapserver.py runs its own slapd on a loopback port; the system one
# that the package may start is never used), mandoc, groff-base and man-db
# to lint and render the manual pages (tests/test_man.py), systemd for
# `systemd-analyze verify` of the unit file (tests/test_unit_file.py; no
# systemd needs to run).  Installed only when missing.
TEST_DEBS := swaks sqlite3 openssl passwd strace python3-venv dnsmasq-base dovecot-imapd dovecot-lmtpd slapd ldap-utils mandoc groff-base man-db systemd
test-deps:
	@missing=""; for p in $(TEST_DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  APT="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"; \
	  $$APT install -y -q $$missing >/dev/null || { $$APT update -q >/dev/null && $$APT install -y -q $$missing >/dev/null; }; \
	fi

# The unprivileged user the smtp and queue processes run as when the daemon
# starts as root (`queue user`, docs/configuration.md): created when missing,
# only as root (passwd's useradd, installed if absent).  As another user there
# is nothing to do: the daemon then runs every process as that user.
SYSTEM_USER := _postillion
system-user:
	@if [ "$$(id -u)" = 0 ] && ! id -u $(SYSTEM_USER) >/dev/null 2>&1; then \
	  echo "creating system user $(SYSTEM_USER)"; \
	  command -v useradd >/dev/null 2>&1 || apt-get install -y -q passwd >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q passwd >/dev/null; }; \
	  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $(SYSTEM_USER); \
	fi

bench: $(STAMP)
	bench/run

## make man: regenerate man/man8/postillion.8 and man/man5/postillion.conf.5 from
##   docs/commands.md and docs/configuration.md (commit them with the docs)
man: $(STAMP)
	$(BIN)/python tools/mkman

clean:
	rm -rf $(VENV) var build src/*.egg-info

## make conformance: OpenSMTPD 6.8's `smtpd -n` vs `postillion check` on every test
## config (installs Debian opensmtpd, service disabled, if missing); not in `make test`
.PHONY: conformance
conformance: $(STAMP)
	$(BIN)/python conformance/run.py
