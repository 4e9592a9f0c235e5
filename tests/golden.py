"""Golden files: compare, or rewrite them with UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run the tests with UPDATE_GOLDEN=1 once"
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"
