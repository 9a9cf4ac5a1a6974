"""Reading an export directory's manifest on the runtime side (no import of export/)."""

from __future__ import annotations

import json
from pathlib import Path

from transduce.files import sha256_file

MANIFEST_FILE = "manifest.json"
SUPPORTED_FORMATS = ("transduce-onnx/1",)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; export the model first (transduce export CHECKPOINT "
            f"--output {directory})"
        )
    return json.loads(path.read_text())


def load_export(directory: Path) -> dict:
    manifest = read_manifest(directory)
    if manifest.get("format") not in SUPPORTED_FORMATS:
        raise ValueError(
            f"{directory}/manifest.json has format {manifest.get('format')!r}; this transduce "
            f"reads {SUPPORTED_FORMATS}. Re-export with `transduce export`"
        )
    return manifest


def check_graph_files(directory: Path, manifest: dict) -> None:
    """Every graph the manifest lists exists and has the recorded hash; all problems at once."""
    problems = []
    for name, graph in manifest["graphs"].items():
        path = directory / graph["file"]
        if not path.is_file():
            problems.append(f"{name} graph {path} is missing")
        elif sha256_file(path) != graph["sha256"]:
            problems.append(f"{name} graph {path.name} does not match the hash in manifest.json")
    if problems:
        raise ValueError(
            f"export directory {directory} is inconsistent:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nre-export it: transduce export CHECKPOINT --output "
            + str(directory)
        )
