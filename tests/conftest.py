"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# Helper modules whose asserts should explain themselves as the tests' own do.
pytest.register_assert_rewrite("bad_input_helpers", "cli_util", "trainer_fixtures", "predict_fixtures")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data in ``../shared/data`` (relative to the project root); skips when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is absent: real-data test skipped")
    return path
