# Two commands: `make run` and `make test`. Both create .venv and install into it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests use as real peers (sipp as the SIP caller, sipvicious for scans,
# nodejs runs the Node.js signature-check snippet of docs/webhooks.md, espeak-ng is the
# "espeak" talk-back voice; `make run` works without it, docs/voices.md; kamailio fronts the
# SIP workers when `[sip] max_calls` is above 4, docs/sip.md).
TEST_DEBS := sip-tester sipvicious sox nodejs espeak-ng kamailio chromium

# The end-of-turn model, Smart Turn v3.2 (BSD-2-Clause, by Daily), ships inside the pipecat-ai
# wheel. Only the model file and its licence are taken out of it, into the venv (pipecat and its
# dependency tree are not installed); app/pipeline/models.py finds them there.
SMART_TURN_WHEEL := pipecat-ai==1.14.0
SMART_TURN_SHA256 := 2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f
SMART_TURN_DIR := $(VENV)/share/hearsay/smart-turn-v3.2
SMART_TURN := $(SMART_TURN_DIR)/smart-turn-v3.2-cpu.onnx

.PHONY: run test install install-test smart-turn debs lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(SMART_TURN):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(VENV)/tmp-smart-turn && mkdir -p $(VENV)/tmp-smart-turn $(SMART_TURN_DIR)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d $(VENV)/tmp-smart-turn $(SMART_TURN_WHEEL)
	$(PY) -m zipfile -e $(VENV)/tmp-smart-turn/pipecat_ai-*.whl $(VENV)/tmp-smart-turn/wheel
	cp $(VENV)/tmp-smart-turn/wheel/pipecat_ai-*.dist-info/licenses/LICENSE $(SMART_TURN_DIR)/LICENSE
	echo "$(SMART_TURN_SHA256)  $(VENV)/tmp-smart-turn/wheel/pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx" | sha256sum -c --quiet
	cp $(VENV)/tmp-smart-turn/wheel/pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx $@
	rm -rf $(VENV)/tmp-smart-turn

smart-turn: $(SMART_TURN)

$(VENV)/.installed-test: $(VENV)/.installed client/pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,multilingual]' -e ./client
	touch $@

install: $(VENV)/.installed $(SMART_TURN)
install-test: $(VENV)/.installed-test $(SMART_TURN)

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
