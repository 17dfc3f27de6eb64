# Two commands: `make run` and `make test`.  Everything else is set up by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-deps clean bench

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
run: $(STAMP)
	$(BIN)/postillion run --demo -d -D port=$(PORT) $(ARGS)

## make test: install what the tests need (Debian packages included) and run them all
test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Debian packages the tests drive: swaks as a real peer, sqlite3 and openssl as the
# README's blocks call them (tests/docs), passwd (useradd/chpasswd/userdel) for
# the system accounts AUTH is tested on.  Installed only when missing.
TEST_DEBS := swaks sqlite3 openssl passwd
test-deps:
	@missing=""; for p in $(TEST_DEBS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get install -y -q $$missing >/dev/null || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $$missing >/dev/null; }; \
	fi

bench: $(STAMP)
	bench/run

clean:
	rm -rf $(VENV) var build src/*.egg-info

## make conformance: OpenSMTPD 6.8's `smtpd -n` vs `postillion check` on every test
## config (installs Debian opensmtpd, service disabled, if missing); not in `make test`
.PHONY: conformance
conformance: $(STAMP)
	$(BIN)/python conformance/run.py
