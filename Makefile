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
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo
