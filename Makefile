# Two commands matter: `make demo` and `make test` (see README.md). Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCHVISION := torchvision==0.29.2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test demo stop system-deps lock bench clean-demo

venv: $(STAMP)

# torch first, from the local CPU wheel: any looser spec resolves to a CUDA build and GBs of nvidia packages.
# torchvision (only CUDA builds exist on the index) goes in without dependencies and is made importable on
# CPU torch by pipeline/compat/torchvision_ops.py, installed as a .pth hook.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	PIP_CONSTRAINT=constraints.txt $(PIP) install -q -e ".[s3,test,cluster]"
	PIP_CONSTRAINT=constraints.txt $(PIP) install -q --no-deps $(TORCHVISION)
	$(PY) -c "from pipeline.compat.torchvision_ops import write_pth; print(write_pth())"
	@touch $(STAMP)

# Headless Chromium for the Ins-align judging page test (Debian packages; skipped when apt is unavailable).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "warning: could not install chromium; the judging-page test will be skipped"; \
	fi

test: venv system-deps
	$(PY) -m pytest tests

demo: venv
	$(PY) -m flows.stack demo

stop:
	@test -x $(PY) && $(PY) -m flows.stack stop || true

bench: venv
	$(PY) bench/shards.py

# Re-resolve constraints.txt from the current venv (after changing dependencies in pyproject.toml).
lock: venv
	@{ head -4 constraints.txt; $(PIP) freeze | grep -v -E "^-e |^smartedit|^# Editable|^torch==|^torchvision==" | sort -f; echo "torch==2.13.0"; } > constraints.lock.tmp
	@mv constraints.lock.tmp constraints.txt

clean-demo: stop
	rm -rf .demo .prefect/demo
