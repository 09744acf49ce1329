# The two commands of the README: `make demo` and `make test`.
.PHONY: setup demo test test-unit lint

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test:
	bash scripts/test.sh

test-unit: setup
	.venv/bin/pytest -q tests/unit

lint: setup
	.venv/bin/ruff check domsnap workers tasks schemas tests bench
	.venv/bin/mypy
