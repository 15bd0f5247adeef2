# Short commands for the README. Everything also works without make (see each recipe).
PYTHON ?= python

.PHONY: install demo test dev lint format bench

install:            ## install the package with its dev tools
	$(PYTHON) -m pip install -e '.[dev]'

demo: install       ## the README's first command: sample scrapes in, catalog out
	catalog-pipeline demo

test:               ## the README's second command: the whole suite (starts Postgres and S3)
	$(PYTHON) -m pytest

dev:                ## the Dagster UI and daemon on http://127.0.0.1:3000
	dagster dev

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

bench:              ## every method on a 1,000,000-row file and its re-run (2 × 1.3 GB in a temp folder)
	$(PYTHON) -m benchmarks.ingest --rows 1000000
