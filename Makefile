# Two commands do the whole set-up on a fresh machine:
#   make demo   -> .venv + install + broker check + `treeline demo`
#   make test   -> .venv + install + broker check + the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test install broker clean benchmarks

demo: install broker
	$(VENV)/bin/treeline demo $(DEMO_ARGS)

test: install broker
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

install: $(STAMP)

# torch is pinned to the CPU wheel (2.13.0) through the [export] extra; it is only used to
# export models. The node engine runs without it.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[export,dev]"
	touch $(STAMP)

# Mosquitto is the broker for tests and production; install it where apt-get can.
# Without it, the demo and tests fall back to the embedded amqtt broker.
broker:
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then \
		echo "broker: mosquitto found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "broker: installing mosquitto"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) \
			|| echo "broker: mosquitto install failed; using the embedded amqtt broker"; \
	else \
		echo "broker: mosquitto not installed; using the embedded amqtt broker"; \
	fi

benchmarks: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .treeline .pytest_cache
