# Everything a fresh machine needs: `make demo` and `make test` set up the venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision first, pinned to the builds these machines install from local disk;
# the rest of the pins keep CI reproducible (users get the ranges in pyproject.toml).
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench bench-cross clean

setup: $(STAMP)

# A first install writes about 6.5 GiB (torch's CUDA build): refuse at the start, not halfway.
NEED_GIB ?= 7

$(STAMP): pyproject.toml constraints-ci.txt
	@test -x $(BIN)/python || { d="$(abspath $(VENV))"; while [ ! -d "$$d" ]; do d=$$(dirname "$$d"); done; \
		free=$$(df -Pk "$$d" | awk 'NR==2 {print int($$4 / 1048576)}'); \
		[ "$$free" -ge $(NEED_GIB) ] || { echo "make setup: $$free GiB free for $(VENV), a first install needs about $(NEED_GIB) GiB; free space and rerun" >&2; exit 2; }; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-ci.txt torch torchvision
	$(BIN)/pip install -q -c constraints-ci.txt -e '.[test]'
	touch $(STAMP)

# The demo in miniature of the real experiment: train on the CT-like phantom with GIN copies,
# choose the checkpoint on held-out CT-like cases, measure on the MRI-like phantom (never trained on).
DEMO_STEPS ?= 300
demo: setup
	$(BIN)/augment build manifests/demo.yaml --overwrite
	$(BIN)/augment verify out/demo
	$(BIN)/augment ingest phantom:2 --seed 2000 --size 128 --out out/demo-val --overwrite --no-preview
	$(BIN)/augment ingest phantom-mri:4 --seed 1000 --size 128 --keep-empty 1 --out out/demo-mri --overwrite
	rm -rf runs/demo
	$(BIN)/train seg --data out/demo --val out/demo-val --out runs/demo --loss dice+infonce \
		--steps $(DEMO_STEPS) --batch-size 8 --val-every 100 --seed 0
	$(BIN)/train eval --model runs/demo --data out/demo-mri --out runs/demo/eval-mri
	@echo "preview: out/demo/preview.png  curves: runs/demo/curves.png  predictions: runs/demo/eval-mri/predictions.png"

test: setup
	$(BIN)/pytest -q --durations=20

bench: setup
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_render.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_predict.py
	$(BIN)/python bench/bench_engines.py

# The README's two headline tables: CT -> MRI and MRI -> CT, standard protocol, ERM, our best row,
# the peer SLAug, SLAug on our copies (`paper` GIN, and GIN as the released code computes it), and
# the peer GIN-IPA as its released code computes it (MRI -> CT also GIN-IPA as we first computed it),
# on ../shared/data with two seeds (long: 25 to 140 minutes per row and seed, about 29 hours in all
# on 2 cores).
# Other rows: bench/cross_modality.py --help.
bench-cross: setup
	$(BIN)/python bench/cross_modality.py --direction ct2mr --protocol standard --rows 0,4,5,7,9,11 --seeds 0,1
	$(BIN)/python bench/cross_modality.py --direction mr2ct --protocol standard --rows 0,4,5,6,7,9,11 --seeds 0,1

clean:
	rm -rf out runs bench/results .pytest_cache
