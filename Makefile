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

# The single-clip demo: learn a held-out motion (zigzag) from one MovingShapes clip, replay it
# with other appearances. (The Ray pipeline over manifests/demo.jsonl lands with pipelines/.)
demo: $(STAMP)
	$(PY) -m motioncrafter.cli tune --video manifests/demo/000_zigzag_red_circle.mp4 \
		--prompt "a red circle moves in a zigzag on a black background" --out runs/demo/adapter
	$(PY) -m motioncrafter.cli generate --adapter runs/demo/adapter --out runs/demo/videos --seeds 0 1 \
		--prompt "a blue square moves in a zigzag on a white background" \
		--prompt "a yellow triangle moves in a zigzag on a gray background"

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

pretrain: $(STAMP)
	$(PY) -m motioncrafter.toyworld.pretrain --threads 2 --unet-steps 2000 --eval-every 400 --eval-prompts 18 --warmup 100

benchmark-base: $(STAMP)
	$(PY) benchmarks/base_quality.py

clean:
	rm -rf runs .pytest_cache
