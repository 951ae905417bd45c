# Two commands: `make run` and `make test`. Both create .venv and install into it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests use as real peers (sipp as the SIP caller, sipvicious for scans,
# nodejs runs the Node.js signature-check snippet of docs/webhooks.md, espeak-ng is the
# "espeak" talk-back voice; `make run` works without it, docs/voices.md; kamailio fronts the
# SIP workers when `[sip] max_calls` is above 4, docs/sip.md).
TEST_DEBS := sip-tester sipvicious sox nodejs espeak-ng kamailio chromium

.PHONY: run test install install-test debs lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed client/pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,multilingual]' -e ./client
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(PY) -m app serve --config settings.toml

debs:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "The tests need these Debian packages. Run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

lint: install-test
	$(VENV)/bin/ruff check app sip tests examples client
	$(VENV)/bin/mypy

test: debs install-test lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=20

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
