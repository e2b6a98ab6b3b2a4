# Two commands do all the set-up on a fresh clone: `make test` and `make demo`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CDK_STAMP := node_modules/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export AWS_DEFAULT_REGION ?= us-east-1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup synth test demo bench lint clean

setup: $(STAMP) $(CDK_STAMP) $(CHROMIUM)

$(STAMP): pyproject.toml requirements/*.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -r requirements/dev.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PIP) install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -c "import torch, PIL, aws_cdk, moto; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

# The CDK CLI (`npx cdk synth|deploy`) and asl-validator (tests/infra/test_asl_checks.py), pinned by
# package-lock.json.
$(CDK_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(CDK_STAMP)

# Headless Chromium for the evaluation report's browser test (tests/training/test_report.py), from Debian's
# packages: Playwright cannot download its own browsers without internet.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq chromium

synth: setup
	npx cdk synth --quiet

# Test files are spread over TEST_WORKERS processes (CI's 2 cores by default); one file's tests stay in one
# process, so its module and session fixtures are built once there.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: setup
	$(VENV)/bin/cxr demo

bench: setup
	$(PY) bench/normalise_throughput.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache
