# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
POLICY_VENV := policy/.venv
STACK ?= gpu

.PHONY: demo test lint unit render venv policy-venv bench-overhead clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml epp/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./epp -e '.[dev]'
	touch $@

# The policy pack runs in its own venv: pulumi-policy pins a protobuf that xds-protos cannot share.
policy-venv: $(POLICY_VENV)/.installed

$(POLICY_VENV)/.installed: policy/requirements.txt
	test -x $(POLICY_VENV)/bin/python || $(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet -r policy/requirements.txt
	touch $@

## The whole data plane on 127.0.0.1 (Envoy, BBR, EPPs, simulated vLLM), a benchmark and its report.
demo: venv
	$(PY) -m bench.demo

## Lint, type-check, then every test.
test: lint unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy epp/src/epp
	$(VENV)/bin/mypy components render vllmsim onebox bench policy/rules.py __main__.py

unit: venv policy-venv
	$(PY) -m pytest

## Print every Kubernetes object a stack would create (mocked Pulumi run, no cloud): make render STACK=tpu
render: venv
	$(PY) -m render $(STACK)

## Added latency of Envoy + EPP over Envoy alone, and sustained requests/s.
bench-overhead: venv
	$(PY) -m bench.overhead

clean:
	rm -rf $(VENV) $(POLICY_VENV) reports .mypy_cache .ruff_cache .pytest_cache
