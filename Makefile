# ovi-server: every entry point a newcomer needs. `make serve` and `make test` are the two that matter.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel here; GPU hosts may override, e.g. `make serve TORCH_SPEC=torch` to keep their own build.
TORCH_SPEC ?= torch==2.13.0
VARIANT ?= 720x720_5s
WEIGHTS_DIR ?= weights
REFERENCE ?= ../shared/reference

.PHONY: install test conformance lint fmt weights serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)" -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest
	HF_HUB_OFFLINE=1 $(VENV)/bin/ovi conformance tests/fixtures/reference
	@if [ -d "$(REFERENCE)" ]; then HF_HUB_OFFLINE=1 $(VENV)/bin/ovi conformance "$(REFERENCE)"; fi

conformance: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/ovi conformance $(REFERENCE)

lint: install
	$(VENV)/bin/ruff check model server cli tools tests bench
	$(VENV)/bin/ruff format --check model server cli tools tests bench

fmt: install
	$(VENV)/bin/ruff format model server cli tools tests bench
	$(VENV)/bin/ruff check --fix model server cli tools tests bench

weights: install
	$(VENV)/bin/ovi weights --variant $(VARIANT) --dir $(WEIGHTS_DIR) $(if $(FP8),--fp8)

serve: weights
	$(VENV)/bin/ovi serve --variant $(VARIANT) --weights-dir $(WEIGHTS_DIR) $(if $(FP8),--fp8)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
