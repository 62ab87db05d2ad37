# The README's two commands: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install test lint demo bench clean browser fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 first: the CPU build that lies on local disk (never a CUDA download).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[hf,report,api,gguf,demo,dev,train,ray]"
	touch $(STAMP)

install: $(STAMP)

# The demo needs the model stack and the report, not the test toolchain.
$(DEMO_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[hf,report,demo]"
	touch $(DEMO_STAMP)

lint: install
	$(BIN)/ruff check src tests benchmarks

# Headless Chromium for tests/test_report_browser.py: Debian packages, installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

test: install lint browser
	$(BIN)/python -m pytest -q -n 2 tests

demo: $(DEMO_STAMP)
	$(BIN)/tokcal demo --out demo-output

# The seeded reader fuzzer and the CLI contract, the fuzzer at 20x the CI case count (about 50,000 cases).
fuzz: install
	TOKCAL_FUZZ_SCALE=20 $(BIN)/python -m pytest -q -n 2 tests/test_fuzz_readers.py tests/test_cli_contract.py

bench: install
	for b in metrics fit evaluate collect generate logprobs losses stream; do $(BIN)/python benchmarks/$${b}_bench.py || exit 1; done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
