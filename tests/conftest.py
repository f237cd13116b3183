"""Shared fixtures for the engine tests. Every test gets its own SQLite file under
``tmp_path``; nothing is shared between tests. Helpers are in ``engine_support.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from baton import Baton, Settings
from baton.testing import FakeClock
from engine_support import make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def baton(settings: Settings) -> Iterator[Baton]:
    with Baton(settings) as b:
        yield b


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked_baton(settings: Settings, clock: FakeClock) -> Iterator[Baton]:
    """A runtime whose time is a :class:`FakeClock`."""
    with Baton(settings, clock=clock) as b:
        yield b
