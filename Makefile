# Two commands a newcomer needs: `make run` and `make test` (README.md: their times).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: run test install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python sample.py

test: $(STAMP)
	$(BIN)/ruff check .
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q --durations=30 tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache

# The built-in models. `make builtin` trains v1 from a random init (configs/builtin.py);
# `make builtin-v2` continues v1's export as the box variant (configs/builtin_v2.py),
# `make builtin-v2-on` trains v2's export on (configs/builtin_v2_on.py), `make builtin-v2-on2`
# trains that export on (configs/builtin_v2_on2.py: the shipped box model) and
# `make builtin-paper` starts the paper variant from v2's (configs/builtin_paper.py).
# None of them deletes: each makes its init folder once and resumes its run (stop it any
# time, run it again).
# `make install-builtin` then copies the exports over the models shipped in
# dreamlayer_jax/builtin/<box|paper>/ (an explicit, separate step).
.PHONY: builtin builtin-v2 builtin-v2-on builtin-v2-on2 builtin-paper install-builtin
builtin: $(STAMP)
	test -f runs/builtin/init/model_index.json || \
		$(BIN)/python -m dreamlayer_jax.cli.init_model configs/builtin.py runs/builtin/init
	$(BIN)/python train.py --config configs/builtin.py --workdir runs/builtin --resume

# the base of v2: v1's export (V1=dreamlayer_jax/builtin/box starts from the
# shipped box model instead, without retraining v1)
V1 ?= runs/builtin/export

.PHONY: builtin-base
builtin-base:
	@test -f $(V1)/model_index.json || \
		{ echo "error: no $(V1) (v1): run make builtin first, or set V1=FOLDER" >&2; exit 2; }

builtin-v2: $(STAMP) builtin-base
	test -f runs/builtin_v2/init/model_index.json || \
		$(BIN)/python -m dreamlayer_jax.cli.init_model configs/builtin_v2.py runs/builtin_v2/init \
			--base $(V1)
	$(BIN)/python train.py --config configs/builtin_v2.py --workdir runs/builtin_v2 --resume

# v2's export (step 21200): the start of builtin-v2-on and of the paper variant
V2 ?= runs/builtin_v2/export

.PHONY: builtin-v2-base
builtin-v2-base:
	@test -f $(V2)/model_index.json || \
		{ echo "error: no $(V2) (v2): run make builtin-v2 first, or set V2=FOLDER" >&2; exit 2; }

# v2's export trained on with a fresh optimizer to step 40600
# (configs/builtin_v2_on.py; V2=FOLDER names another start)
builtin-v2-on: $(STAMP) builtin-v2-base
	$(BIN)/python train.py --config configs/builtin_v2_on.py --workdir runs/builtin_v2_on \
		--resume --set model=$(V2)

# the shipped box model: that export trained on with a fresh optimizer again
# (configs/builtin_v2_on2.py; V2ON=FOLDER names another start)
V2ON ?= runs/builtin_v2_on/export
builtin-v2-on2: $(STAMP)
	@test -f $(V2ON)/model_index.json || \
		{ echo "error: no $(V2ON): run make builtin-v2-on first, or set V2ON=FOLDER" >&2; exit 2; }
	$(BIN)/python train.py --config configs/builtin_v2_on2.py --workdir runs/builtin_v2_on2 \
		--resume --set model=$(V2ON)

# the paper variant starts from the box model v2's export (configs/builtin_paper.py)
builtin-paper: $(STAMP) builtin-v2-base
	test -f runs/builtin_paper/init/model_index.json || \
		$(BIN)/python -m dreamlayer_jax.cli.init_model configs/builtin_paper.py \
			runs/builtin_paper/init --base $(V2)
	$(BIN)/python train.py --config configs/builtin_paper.py --workdir runs/builtin_paper --resume

# box: the newest of the v2-on2, v2-on, v2 and v1 exports; paper: its export if there is one
install-builtin:
	@box=runs/builtin_v2_on2/export; test -f $$box/model_index.json || box=runs/builtin_v2_on/export; \
	test -f $$box/model_index.json || box=runs/builtin_v2/export; \
	test -f $$box/model_index.json || box=runs/builtin/export; \
	test -f $$box/model_index.json || \
		{ echo "error: no runs/builtin_v2_on2, builtin_v2_on, builtin_v2 or builtin export: run make builtin first" >&2; exit 2; }; \
	rm -rf dreamlayer_jax/builtin/box && cp -r $$box dreamlayer_jax/builtin/box && \
	echo "installed $$box as builtin:box"; \
	if test -f runs/builtin_paper/export/model_index.json; then \
		rm -rf dreamlayer_jax/builtin/paper && \
		cp -r runs/builtin_paper/export dreamlayer_jax/builtin/paper && \
		echo "installed runs/builtin_paper/export as builtin:paper"; fi
