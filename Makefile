# attngraft — every set-up and check goes through these targets.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup data kernels demo studies explain-demo test test-all lint format lock clean

setup: $(STAMP) data kernels  ## create .venv, install the pinned stack + attngraft (editable), the dataset, the kernel

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev,export]'
	touch $@

kernels: $(STAMP)  ## compile the k×k attention kernel into its cache (~/.cache/attngraft/kernels; seconds, once)
	$(BIN)/python -m attngraft.blocks.kernels build

data:  ## the real default dataset (Fashion-MNIST) from the Debian package
	@bash scripts/install-data.sh

demo: setup  ## the main job: the graft study's quick profile (~15 min on 2 CPU cores), then its table
	$(BIN)/attngraft study graft --profile quick --resume

studies: setup  ## the three studies' quick profiles, published to docs/results/ (about an hour on 2 CPU cores)
	$(BIN)/attngraft study graft --profile quick --resume --publish docs/results/graft-quick
	$(BIN)/attngraft study vit --profile quick --resume --publish docs/results/vit-quick
	$(BIN)/attngraft study sasa --profile quick --resume --publish docs/results/sasa-quick

GRAFT_BASELINE := runs/studies/graft-quick/fashion-mnist/resnet18/seed0/weights.safetensors
explain-demo: setup  ## docs/results/explain: a grafted ResNet-18 and a ViT trained briefly, then explained (~10 min)
	test -f $(GRAFT_BASELINE) || $(MAKE) demo
	rm -rf runs/explain_graft runs/explain_vit
	$(BIN)/attngraft fit --config configs/explain_graft.yaml --model.backbone_weights $(GRAFT_BASELINE)
	$(BIN)/attngraft fit --config configs/vit_fashion_mnist.yaml --run_name explain_vit --trainer.max_epochs 3
	$(BIN)/attngraft explain --ckpt_path runs/explain_graft/version_0/checkpoints/last.ckpt \
		--out docs/results/explain/graft --per-class 1 --no-progress
	$(BIN)/attngraft explain --ckpt_path runs/explain_vit/version_0/checkpoints/last.ckpt \
		--out docs/results/explain/vit --images 4 --layers --no-progress

test: setup
	$(BIN)/python -m pytest

test-all: setup  ## includes the slow tests
	$(BIN)/python -m pytest -m ''

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

lock: setup  ## re-pin the exact versions of the current .venv
	{ echo '# Exact versions of the tested stack, used by `make setup` (pip install -c). Regenerate with `make lock`.'; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > requirements/constraints.txt.tmp
	mv requirements/constraints.txt.tmp requirements/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
