# Shortcuts; the scripts/ they call are the real thing.
.PHONY: run test images images-local bench lint

run:
	./scripts/run

test:
	./scripts/test

images:
	./scripts/build-images

images-local:
	./scripts/build-images --local-base

bench:
	./scripts/setup --dev && .venv/bin/python -m bench

lint:
	.venv/bin/ruff check orchestrator images tests bench && .venv/bin/ruff format --check orchestrator images tests bench && .venv/bin/mypy
