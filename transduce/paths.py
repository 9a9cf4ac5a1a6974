"""Where transduce keeps what it makes on demand (the trained demo model and its artifacts)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$TRANSDUCE_HOME, or ~/.cache/transduce."""
    return Path(os.environ.get("TRANSDUCE_HOME", Path.home() / ".cache" / "transduce"))


def demo_checkpoint_dir() -> Path:
    return home() / "demo" / "checkpoint"
