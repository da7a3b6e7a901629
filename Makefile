# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) .venv at the repo root and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install pretrain benchmark-base clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU torch first: with no torch present, `pip install .` would pull a multi-GB CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The demo: the whole pipeline (Ray embedded on this machine) over six MovingShapes reference clips,
# five of them with motions the shipped base never saw -> runs/demo/ (report.html, Parquet tables).
demo: $(STAMP)
	$(PY) -m motioncrafter_cli run --manifest manifests/demo.jsonl --output runs --run-id demo --config manifests/demo.toml

test: $(STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "no chromium: the browser test of report.html is skipped"
	$(PY) -m mypy  # both packages, configured in pyproject.toml (a few seconds: heavy libraries are not followed)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 tests

pretrain: $(STAMP)
	$(PY) -m motioncrafter.toyworld.pretrain --threads 2 --unet-steps 3000 --eval-every 500 --eval-prompts 24 --warmup 100

benchmark-base: $(STAMP)
	$(PY) benchmarks/base_quality.py

clean:
	rm -rf runs .pytest_cache
