# Two commands do the whole set-up on a fresh machine:
#   make demo   -> .venv + install + broker check + `treeline demo`
#   make demo-scenarios -> the collaboration scenarios (`treeline demo --scenario all --quick`)
#   make test   -> .venv + install + broker check + lint (ruff, mypy) + the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# every package we ship or run; ruff and mypy must be clean on all of them
PACKAGES := treeline_common ml_scheduler node_engine cluster_orchestrator root_orchestrator \
            deployment_descriptors model_zoo treeline_cli benchmarks

.PHONY: demo demo-scenarios test install broker browser lint clean benchmarks

demo: install broker
	$(VENV)/bin/treeline demo $(DEMO_ARGS)

# where edge-cloud collaboration wins: every scenario on its own devices, one table each (README)
demo-scenarios: install broker
	$(VENV)/bin/treeline demo --scenario all --quick $(DEMO_ARGS)

# two worker processes (pytest-xdist), one test file per worker at a time: a file's module-scoped
# broker and stacks start once; most tests wait on processes, brokers and deadlines, not the CPU
PYTEST_WORKERS ?= 2
test: install broker browser lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

install: $(STAMP)

# ruff (rules in pyproject.toml, [tool.ruff]) and mypy ([tool.mypy]); `make test` runs this first.
# Both always run, so one pass shows every finding; either failing fails the target.
lint: install
	@status=0; \
	echo "lint: ruff check"; $(VENV)/bin/ruff check $(PACKAGES) || status=1; \
	echo "lint: mypy"; $(VENV)/bin/mypy $(PACKAGES) || status=1; \
	exit $$status

# torch is pinned to the CPU wheel (2.13.0) through the [export] extra; it is only used to
# export models. The node engine runs without it.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@test -x $(PY) || { echo "install: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "install: pip install -e .[export,dev] (several minutes)"
	$(PY) -m pip install --quiet -e ".[export,dev]"
	@touch $(STAMP)

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

# Debian's Chromium for the web UI's browser tests (Playwright drives /usr/bin/chromium; it cannot
# download its own browsers here). Installed where apt-get can; otherwise those tests skip, saying so.
browser:
	@if command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium; then \
		echo "browser: chromium found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "browser: installing chromium (for the web UI's browser tests)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "browser: chromium install failed; the browser tests will skip"; \
	else \
		echo "browser: chromium not installed; the browser tests will skip"; \
	fi

benchmarks: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .treeline .pytest_cache
