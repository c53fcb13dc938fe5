# The two entry points (see README.md): `make quickstart` and `make test`.
.PHONY: setup quickstart test lint unit

setup:
	@scripts/setup.sh

quickstart: setup
	.venv/bin/meshext quickstart --config examples/quickstart

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/mypy --strict src tests

test: lint
	.venv/bin/pytest -q

unit: setup
	.venv/bin/pytest -q -m "not e2e"
