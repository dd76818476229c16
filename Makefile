# make run   - set up and run the main job: the benchmark report (BENCH_ARGS=--quick for a short run)
# make test  - set up and run the tests
# make docs  - build the docs site with MkDocs, strict: every link and anchor checked (-> site/)
# Setup makes .venv, installs $(TORCH_SPEC) first (a CPU build where one is on disk), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)
# pytest-xdist workers for make test (2: the 2-core machine's run is 1.3x faster, docs/tests.md);
# each test file stays in one worker; TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2

.PHONY: setup run test docs lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install --quiet "$(TORCH_SPEC)")
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

run: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

docs: setup
	$(PY) -m mkdocs build --strict

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) outputs reports artifacts site .pytest_cache
