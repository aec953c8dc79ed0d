# Two entry points for a newcomer: `make demo` and `make test`. Each (re)creates the virtual environment
# when pyproject.toml changed, installs what is needed, then runs.
VENV     ?= .venv
PYTHON   ?= python3
# The CPU build of torch first, so that no CUDA build is pulled in (override on a GPU machine: TORCH=torch).
TORCH    ?= torch==2.13.0
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
FMNIST   := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
DEMO_OUT ?= demo-out

.PHONY: demo test install data browser wheel clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[photos,transforms,test]"
	# test-only peer library; --no-deps because it declares torchvision, whose wheels need the CUDA build of torch
	$(PY) -m pip install -q --no-deps "torchattacks==3.5.1"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when apt is there; otherwise advshield downloads it (SHA-256 checked).
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; advshield will download Fashion-MNIST"; \
	fi

# Chromium for the report's browser test (tests/test_report_html.py), from Debian when apt is there; the test
# is skipped with its reason otherwise.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "note: could not install chromium; the report's browser test will be skipped"; \
	fi

demo: install data
	$(VENV)/bin/advshield demo --out $(DEMO_OUT)

# The suite runs on TEST_WORKERS pytest-xdist processes (default: one per core), a test file per worker, each
# with one torch thread: on 2 cores this halves the wall time, and no two multi-threaded torch processes contend.
TEST_WORKERS ?= auto

test: install data browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# dist/advshield-*.whl, zoo included (package data); a clean build/ so no stale module leaks in
wheel: install
	rm -rf build
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build dist
