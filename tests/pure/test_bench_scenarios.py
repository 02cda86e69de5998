"""`make bench` is not part of the suite, so check here that every scenario it runs still loads."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import SCENARIOS


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_benchmark_scenario_loads_and_has_a_run(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.run)
