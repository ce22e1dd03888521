"""Fault suite: tests import their checks from ``faultkit`` (this folder is on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _runs import ForkingCli, forking_cli


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkingCli]:
    """One forking CLI runner per test module, closed at the module's end."""
    yield from forking_cli(tmp_path_factory)
