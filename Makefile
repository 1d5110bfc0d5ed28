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
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(BIN)/python -m pytest -n 2 --dist loadfile -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache

# The built-in model: a random init, training on synthetic scenes, then the export.
# `make builtin` never deletes: it makes runs/builtin/init once and resumes the run in
# runs/builtin (stop it any time, run it again); `make install-builtin` then copies the
# export over the model shipped in dreamlayer_jax/builtin/box/ (an explicit, separate step).
.PHONY: builtin install-builtin
builtin: $(STAMP)
	test -f runs/builtin/init/model_index.json || \
		$(BIN)/python -m dreamlayer_jax.cli.init_model configs/builtin.py runs/builtin/init
	$(BIN)/python train.py --config configs/builtin.py --workdir runs/builtin --resume

install-builtin:
	test -f runs/builtin/export/model_index.json || \
		{ echo "error: no runs/builtin/export: run make builtin first" >&2; exit 2; }
	rm -rf dreamlayer_jax/builtin/box && cp -r runs/builtin/export dreamlayer_jax/builtin/box
	@echo "installed runs/builtin/export as the built-in model (git diff --stat shows it)"
