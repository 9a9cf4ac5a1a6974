"""Check an exported ONNX graph against what the TensorRT ONNX parser of a TensorRT version imports.

The operator matrices live in `trt_parser_ops/<label>.json` beside this module, one per TensorRT
version family we target. `scripts/extract_trt_parser_ops.py` makes them from onnx-tensorrt's
`docs/operators.md`; each file records the repository, path, commit and header line it was read
from. The check needs onnx only (no torch, no TensorRT), so it runs after every export.

Restrictions (for example "`sorted` must be 1" for TopK) are free text that no code can verify;
`check_trt_support` does not judge them and `restrictions_for` returns them for the log.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)

OPS_DIR = Path(__file__).with_name("trt_parser_ops")
# LIMITATION: no operators.md of TensorRT 10.16 or 11.x could be found, so "10.16" and "11.1"
# reuse the 10.15 matrix (each file's source.note says so, and loading one logs a warning).
# Ops the parser gained after 10.15 are then reported as unsupported. Extracting the newer
# operators.md with scripts/extract_trt_parser_ops.py into these files would remove this.
SUPPORTED_TRT = ["10.15", "10.16", "11.1"]
# the standard ONNX operator set; any other domain needs a TensorRT plugin to be imported
DEFAULT_DOMAINS = ("", "ai.onnx")
_HEADER_VERSION = re.compile(r"TensorRT\s+(\d+(?:\.\d+)*)\s+supports operators")


@dataclass(frozen=True)
class OpSupport:
    """One row of the operator matrix: Y or N, the listed types and the restriction text."""

    supported: bool
    types: tuple[str, ...]
    restrictions: str


@dataclass(frozen=True)
class ParserSupport:
    """The operator matrix of one TensorRT version family and where it was read from.

    It describes the parser's documented coverage only: it says nothing of whether a builder
    finds an implementation for a given shape or precision.
    """

    label: str
    source: dict[str, str]
    opset_min: int
    opset_max: int
    operators: dict[str, OpSupport]

    @property
    def documented_version(self) -> str:
        """The TensorRT version the source's header line names (may differ from `label`)."""
        found = _HEADER_VERSION.search(self.source["header"])
        return found.group(1) if found else self.label


@cache
def load_support(label: str) -> ParserSupport:
    """Load the operator matrix of TensorRT `label` (one of `SUPPORTED_TRT`).

    Args:
        label: a TensorRT version family, such as "10.15".

    Returns:
        The parsed `trt_parser_ops/<label>.json`, cached per process.

    Raises:
        ValueError: `label` has no matrix file.
    """
    path = OPS_DIR / f"{label}.json"
    if label not in SUPPORTED_TRT or not path.is_file():
        raise ValueError(
            f"label {label!r} has no TensorRT parser operator matrix; "
            f"known labels: {', '.join(SUPPORTED_TRT)}"
        )
    document = json.loads(path.read_text())
    support = ParserSupport(
        label=label,
        source=document["source"],
        opset_min=document["opset_min"],
        opset_max=document["opset_max"],
        operators={
            name: OpSupport(entry["supported"], tuple(entry["types"]), entry["restrictions"])
            for name, entry in document["operators"].items()
        },
    )
    if support.documented_version != label:
        logger.warning(
            "TensorRT %s parser support is checked against the operator matrix of TensorRT %s "
            "(%s@%s): %s",
            label,
            support.documented_version,
            support.source["repo"],
            support.source["commit"][:7],
            support.source.get("note", "no note"),
        )
    return support


def _is_default(domain: str) -> bool:
    return domain in DEFAULT_DOMAINS


def _default_opset(model: onnx.ModelProto) -> int | None:
    versions = [entry.version for entry in model.opset_import if _is_default(entry.domain)]
    return max(versions) if versions else None


def _nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node the parser will import, with a readable location, subgraphs included.

    A call of a model-local function is replaced by the function's body, which is what the
    parser imports when no plugin claims the call.
    """
    functions = {(function.domain, function.name): function for function in model.functions}

    def walk(
        nodes: Iterable[onnx.NodeProto], prefix: str, calls: tuple[tuple[str, str], ...]
    ) -> Iterator[tuple[str, onnx.NodeProto]]:
        for index, node in enumerate(nodes):
            location = prefix + (node.name or f"<unnamed #{index}>")
            key = (node.domain, node.op_type)
            if key in functions and key not in calls:
                yield from walk(functions[key].node, f"{location}/", (*calls, key))
                continue
            yield location, node
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.HasField("g") else attribute.graphs
                for subgraph in subgraphs:
                    yield from walk(subgraph.node, f"{location}/{attribute.name}/", calls)

    yield from walk(model.graph.node, "", ())


def check_trt_support(model: onnx.ModelProto, label: str) -> list[str]:
    """List every reason the TensorRT ONNX parser of TensorRT `label` would reject `model`.

    Checks the default-domain opset against the documented range, that every node is in the
    default ONNX domain, and that every op is marked supported in the operator matrix.
    Restrictions of supported ops are not checked (see `restrictions_for`).

    Args:
        model: the exported graph, with its opset imports.
        label: a TensorRT version family from `SUPPORTED_TRT`.

    Returns:
        One message per problem, empty when the graph passes.

    Raises:
        ValueError: `label` has no matrix file.
    """
    support = load_support(label)
    parser = f"the TensorRT ONNX parser of TRT {label}"
    problems = []

    opset = _default_opset(model)
    if opset is None:
        problems.append(f"model imports no default-domain opset; {parser} needs one")
    elif not support.opset_min <= opset <= support.opset_max:
        problems.append(
            f"model default-domain opset {opset} is outside opset {support.opset_min} to "
            f"{support.opset_max}, the range {parser} supports; export with an opset in it"
        )

    for location, node in _nodes(model):
        if not _is_default(node.domain):
            problems.append(
                f"node '{location}' (op {node.domain}::{node.op_type}) is in the custom domain "
                f"'{node.domain}', which {parser} imports only through a plugin"
            )
            continue
        entry = support.operators.get(node.op_type)
        if entry is None or not entry.supported:
            why = "not in its operator matrix" if entry is None else "marked N in its matrix"
            problems.append(
                f"node '{location}' (op {node.op_type}) is not supported by {parser} ({why})"
            )
    return problems


def restrictions_for(model: onnx.ModelProto, label: str) -> dict[str, str]:
    """The documented restrictions of the supported ops that `model` uses, for the log.

    Args:
        model: the exported graph.
        label: a TensorRT version family from `SUPPORTED_TRT`.

    Returns:
        {op_type: restriction text}, sorted by op, for ops whose matrix row has a restriction.
    """
    support = load_support(label)
    used = {node.op_type for _, node in _nodes(model) if _is_default(node.domain)}
    restrictions = {}
    for op in sorted(used):
        entry = support.operators.get(op)
        if entry is not None and entry.supported and entry.restrictions:
            restrictions[op] = entry.restrictions
    return restrictions


def raise_if_unsupported(model: onnx.ModelProto, label: str, graph_name: str) -> None:
    """Log the restrictions that apply to `model`, then raise if TensorRT `label` rejects it.

    Args:
        model: the exported graph.
        label: a TensorRT version family from `SUPPORTED_TRT`.
        graph_name: the graph's name for messages, such as "decoder_step".

    Raises:
        ValueError: with every problem `check_trt_support` found, one bullet each.
    """
    for op, text in restrictions_for(model, label).items():
        logger.info("TensorRT %s restricts %s in %s: %s", label, op, graph_name, text)

    problems = check_trt_support(model, label)
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        bullets = "\n".join(f"  - {problem}" for problem in problems)
        raise ValueError(
            f"{graph_name} cannot be imported by the TensorRT {label} ONNX parser "
            f"({count}):\n{bullets}"
        )
    logger.info("Checked %s against the TensorRT %s parser operator matrix", graph_name, label)
