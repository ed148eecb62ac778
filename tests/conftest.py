"""Shared fixtures: paths to the bundled example campaign and to ../shared/datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
EXAMPLE = REPO / "datasets" / "example_cho_fedbatch"


@pytest.fixture(scope="session")
def example_folder() -> Path:
    return EXAMPLE


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not present at {SHARED_DATASETS}")
    return SHARED_DATASETS
