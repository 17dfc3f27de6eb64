"""Fixtures every part of the suite may share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import sysvenv


@pytest.fixture(scope="session")
def system_venv() -> Iterator[Path]:
    """Postillion installed as a host installs it (tests/sysvenv.py): built
    once per run (about 40 s) for every test that runs it as another user."""
    built = sysvenv.build()
    try:
        yield built
    finally:
        sysvenv.remove(built)
