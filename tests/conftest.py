"""Shared test helpers: where the research data lives and where the bundled sample faces are."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import browser  # noqa: F401  (the headless Chromium fixture, tests/browser.py)

REPO = Path(__file__).resolve().parents[1]
FACES = Path(__file__).resolve().parent / "data" / "faces"


def shared_dir() -> Path:
    """The read-only research data folder, a sibling of the repository (``../shared``)."""
    return Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def faces_dir() -> Path:
    return FACES
