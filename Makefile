# Quick start: `make demo` (dry run over the bundled demo org), `make test` (lint, types, tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo report test lint typecheck pytest bench bench-parts clean requirements

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sop-worker plan --local-org fixtures/demo-org --db-path var/demo.db

# Four days of runs over the demo org (a working copy under var/report/), then their report:
# var/report.html, one self-contained page (the JSON of the same figures: --format json).
REPORT_DAYS := 2026-11-23 2026-11-24 2026-11-25 2026-11-26
report: $(STAMP)
	rm -rf var/report
	for day in $(REPORT_DAYS); do \
		$(BIN)/sop-worker run --local-org fixtures/demo-org --db-path var/report/sop-worker.db \
			--as-of $$day --log-level WARNING > /dev/null || exit $$?; \
	done
	$(BIN)/sop-worker report --local-org fixtures/demo-org --db-path var/report/sop-worker.db \
		--out var/report.html

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard bench)
	$(BIN)/ruff format --check worker tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy worker

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

# The whole cycle beside a simple-salesforce script; BENCH_ARGS="--sizes 10000,50000,200000
# --latency 0.1" for the full table. bench-parts: the gateway and the store on their own, and the rule benches.
bench: $(STAMP)
	$(BIN)/python bench/cycle_bench.py $(BENCH_ARGS)

bench-parts: $(STAMP)
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/store_bench.py
	$(BIN)/python bench/lead_matching_bench.py
	$(BIN)/python bench/sop004_bench.py

# Heroku's buildpack reads requirements.txt: the runtime dependencies as pip resolves them.
requirements: $(STAMP)
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report $(VENV)/resolved.json .
	$(BIN)/python .ci/pin_requirements.py $(VENV)/resolved.json > requirements.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
