"""Check, without TensorRT, that the `tensorrt` names our code uses exist in a TensorRT version.

`tensorrt_names_used` reads Python files with `ast` and collects every attribute chain rooted at
a name bound by `import tensorrt [as trt]`, `import tensorrt.plugin as trtp` or
`from tensorrt import X` (bindings anywhere in a file count for the whole file), plus the string
given to `getattr`/`hasattr` on such a chain. Method calls on objects (`config.set_flag`) are
not followed. A comment `# trt: only>=11` or `# trt: only<11` on the line where a use starts
limits that use to the versions in the range (compared on as many components as the marker has).

`missing_names` checks the uses against a names file made by
`scripts/extract_tensorrt_names.py`, found in `tensorrt_names/<version>.txt` beside this module.
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

NAMES_DIR = Path(__file__).with_name("tensorrt_names")
_RANGE = r"(>=|<=|==|!=|<|>)\s*(\d+(?:\.\d+)*)"
_MARKER = re.compile(r"#\s*trt:\s*only\s*" + _RANGE + r"\s*$")
_ANY_MARKER = re.compile(r"#\s*trt:.*$")
_COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
            "<": operator.lt, ">": operator.gt}  # fmt: skip


class Use(NamedTuple):
    """Where a name is used, and the version range (`>=11`) a marker limits the use to."""

    path: str
    line: int
    only: str | None = None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def applies_to(use: Use, version: str) -> bool:
    """Tell whether `use` counts for TensorRT `version` (always true without a marker)."""
    if use.only is None:
        return True
    op, bound = re.fullmatch(_RANGE, use.only).groups()  # type: ignore[union-attr]
    return _COMPARE[op](_version(version)[: len(_version(bound))], _version(bound))


def _is_tensorrt(node: ast.ImportFrom) -> bool:
    return node.level == 0 and (node.module or "").split(".")[0] == "tensorrt"


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Map each local name bound to tensorrt (or a part of it) to its dotted path in tensorrt."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "tensorrt" or alias.name.startswith("tensorrt."):
                    local = alias.asname or "tensorrt"
                    aliases[local] = alias.name.partition(".")[2] if alias.asname else ""
        elif isinstance(node, ast.ImportFrom) and _is_tensorrt(node):
            prefix = node.module.partition(".")[2]  # type: ignore[union-attr]
            for alias in node.names:
                if alias.name != "*":
                    full = f"{prefix}.{alias.name}" if prefix else alias.name
                    aliases[alias.asname or alias.name] = full
    return aliases


def _chain(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """Return the tensorrt path of `a.b.c` if `a` is bound to tensorrt, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join(p for p in [aliases[node.id], *reversed(parts)] if p) or None


def _names_in_tree(tree: ast.AST, aliases: dict[str, str]) -> list[tuple[str, int]]:
    """Return `(name, line)` for every tensorrt name used in `tree`."""
    found: list[tuple[str, int]] = []
    inner: set[int] = set()  # attribute nodes inside a longer chain, already counted
    for node in ast.walk(tree):  # breadth first: a chain's outer node comes first
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            if (name := _chain(node, aliases)) is not None:
                found.append((name, node.lineno))
                inner.update(id(n) for n in ast.walk(node.value))
        elif isinstance(node, ast.Import):  # `import tensorrt.plugin` uses `plugin`
            modules = [a.name for a in node.names if a.name.startswith("tensorrt.")]
            found += [(m.partition(".")[2], node.lineno) for m in modules]
        elif isinstance(node, ast.ImportFrom) and _is_tensorrt(node):
            found += [(aliases.get(a.asname or a.name, ""), node.lineno) for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            base = node.args[0]
            prefix = aliases.get(base.id) if isinstance(base, ast.Name) else _chain(base, aliases)
            if prefix is not None:
                found.append((f"{prefix}.{node.args[1].value}".lstrip("."), node.lineno))
    return [(name, line) for name, line in found if name]


def tensorrt_names_used(paths: Iterable[str | Path]) -> dict[str, list[Use]]:
    """Collect the tensorrt names used in Python files.

    Args:
        paths: Python source files.

    Returns:
        Each dotted name relative to the `tensorrt` module (`BuilderFlag.TF32`, `Builder`),
        mapped to its uses, sorted by path and line.

    Raises:
        ValueError: When a `# trt:` comment on a line with a use is not `# trt: only<op><version>`.
    """
    used: dict[str, list[Use]] = {}
    for path in paths:
        source = Path(path).read_text()
        tree = ast.parse(source, filename=str(path))
        aliases = _aliases(tree)
        lines = source.splitlines()
        for name, line in _names_in_tree(tree, aliases) if aliases else []:
            only = None
            if comment := _ANY_MARKER.search(lines[line - 1]):
                marker = _MARKER.fullmatch(comment.group())
                if marker is None:
                    raise ValueError(f"{path}:{line}: bad marker {comment.group()!r}")
                only = marker.group(1) + marker.group(2)
            used.setdefault(name, []).append(Use(str(path), line, only))
    logger.debug("found %d tensorrt names", len(used))
    return {name: sorted(uses) for name, uses in used.items()}


def load_names(version: str, names_dir: Path = NAMES_DIR) -> set[str]:
    """Read `<names_dir>/<version>.txt`, skipping comment lines."""
    text = (names_dir / f"{version}.txt").read_text()
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def missing_names(
    used: dict[str, list[Use]], available_names: set[str], version: str | None = None
) -> list[tuple[str, list[Use]]]:
    """List the used names that a TensorRT version does not have.

    A qualified list (one with `Class.member` lines) accepts a name that it holds, or whose
    longest listed prefix has no listed members (`DataType.HALF.name`: enum values are leaves).
    A flat list accepts a name when each of its components is listed.

    Args:
        used: Output of `tensorrt_names_used`.
        available_names: Names of one version, from `load_names`.
        version: That version; when given, uses whose marker excludes it are ignored.

    Returns:
        Sorted `(name, uses)` pairs of the missing names, with the uses that count.
    """
    qualified = any("." in name for name in available_names)
    parents = {name.rpartition(".")[0] for name in available_names}
    missing = []
    for name, uses in sorted(used.items()):
        counted = [u for u in uses if version is None or applies_to(u, version)]
        if not counted or name in available_names:
            continue
        parts = name.split(".")
        if qualified:
            prefixes = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
            known = next((p for p in prefixes if p in available_names), None)
            if known is not None and known not in parents:
                continue
        elif all(part in available_names for part in parts):
            continue
        missing.append((name, counted))
    return missing
