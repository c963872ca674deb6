# Everything a fresh machine needs: `make demo` and `make test` set up the venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision first, pinned to the builds these machines install from local disk;
# the rest of the pins keep CI reproducible (users get the ranges in pyproject.toml).
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench bench-cross clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints-ci.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-ci.txt torch torchvision
	$(BIN)/pip install -q -c constraints-ci.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/augment build manifests/demo.yaml --overwrite
	$(BIN)/augment verify out/demo
	@echo "preview: out/demo/preview.png"

test: setup
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf out runs bench/results .pytest_cache
