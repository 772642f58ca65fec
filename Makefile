# ovi-server: every entry point a newcomer needs. `make serve` and `make test` are the two that matter.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel here; GPU hosts may override, e.g. `make serve TORCH_SPEC=torch` to keep their own build.
TORCH_SPEC ?= torch==2.13.0
VARIANT ?= 720x720_5s
WEIGHTS_DIR ?= weights
REFERENCE ?= ../shared/reference

.PHONY: install test conformance lint fmt weights serve clean bench-wheels

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

# The wheels bench/gpu-lease.sh installs on a GPU host without a package index (Python 3.12,
# x86-64; it has torch, transformers, sentencepiece, protobuf, zipp): ~7 MB in .whl/bench.
# imageio-ffmpeg (68 MB, MP4 muxing only) is left out: the bench writes no MP4.
BENCH_WHEELS ?= diffusers==0.42.1 importlib_metadata==10.2.0 ftfy==6.3.1 wcwidth==0.9.4
bench-wheels: install
	rm -rf .whl/bench
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl/bench $(BENCH_WHEELS)
	@ls -l .whl/bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
