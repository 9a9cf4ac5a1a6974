"""Turn the operator matrix of onnx-tensorrt's `docs/operators.md` into the JSON that
`export/trt_support.py` reads, so every file in `export/trt_parser_ops/` is reproducible.

Run from the repository root, on a saved copy of the markdown (or `-` to read stdin):

    .venv/bin/python scripts/extract_trt_parser_ops.py operators.md \
        --commit fa5aa9f61e7781d2ca8f5351d42c1f19525a6124 --output export/trt_parser_ops/10.15.json

The header sentence ("TensorRT X supports operators in the inclusive range of opset A to opset
B") gives the opset range; each table row gives an operator, Y or N, its types and its
restrictions (verbatim). With `--label` the file can stand for a TensorRT version whose own
matrix could not be found; `--note` then records why in `source.note`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("extract_trt_parser_ops")

HEADER = re.compile(
    r"TensorRT\s+(?P<version>\d+(?:\.\d+)*)\s+supports operators in the inclusive range of "
    r"opset\s+(?P<low>\d+)\s+to\s+opset\s+(?P<high>\d+)\."
)
MATRIX_HEADING = "## Operator Support Matrix"
# one type name of the "Supported Types" column: FP32, BF16, INT64, UINT8, BOOL, DOUBLE, ...
TYPE_NAME = re.compile(r"[A-Z]+[0-9]*")


def _split_row(line: str) -> list[str]:
    """Cells of a markdown table row; rows may omit trailing cells and the closing pipe."""
    cells = [cell.strip() for cell in line.strip().split("|")]
    cells = cells[1:]  # the text before the opening pipe
    while cells and not cells[-1]:
        cells.pop()
    return cells


def _operator(cells: list[str]) -> dict[str, Any]:
    supported = cells[1].upper().startswith("Y")
    types_cell = cells[2] if len(cells) > 2 else ""
    restrictions = " | ".join(cells[3:])
    type_names = [name.strip() for name in types_cell.split(",") if name.strip()]

    # NOTE: an unsupported row may carry its explanation in the types column
    # (DynamicQuantizeLinear in 10.15); such text is kept as the restriction
    if type_names and not all(TYPE_NAME.fullmatch(name) for name in type_names):
        restrictions = " | ".join(filter(None, [types_cell, restrictions]))
        type_names = []
    return {"supported": supported, "types": type_names, "restrictions": restrictions}


def parse_operators_md(text: str) -> dict[str, Any]:
    """Parse an operators.md text into the opset range and the operator matrix.

    Args:
        text: the whole markdown file, as onnx-tensorrt publishes it.

    Returns:
        {"header", "trt_version", "opset_min", "opset_max", "operators"}, where operators maps
        each ONNX op name to {"supported": bool, "types": [str], "restrictions": str}.

    Raises:
        ValueError: the header sentence or the matrix is missing, or an operator is listed twice.
    """
    header = HEADER.search(text)
    if header is None:
        raise ValueError(
            "operators.md has no header sentence 'TensorRT X supports operators in the inclusive "
            "range of opset A to opset B.'; older files state only an upper bound and are not "
            "supported by this script"
        )
    if MATRIX_HEADING not in text:
        raise ValueError(f"operators.md has no '{MATRIX_HEADING}' section")

    operators: dict[str, dict[str, Any]] = {}
    table = text.split(MATRIX_HEADING, 1)[1]
    for line in table.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _split_row(line)
        # the column titles and the |---| separator are not operators
        if len(cells) < 2 or cells[0] == "Operator" or set(cells[0]) <= {"-", ":"}:
            continue
        name = cells[0]
        if name in operators:
            raise ValueError(f"operator {name} is listed twice in the matrix")
        operators[name] = _operator(cells)

    if not operators:
        raise ValueError(f"the '{MATRIX_HEADING}' section of operators.md has no table rows")
    return {
        "header": header.group(0),
        "trt_version": header.group("version"),
        "opset_min": int(header.group("low")),
        "opset_max": int(header.group("high")),
        "operators": operators,
    }


def support_file(
    parsed: dict[str, Any], *, repo: str, path: str, commit: str, label: str, note: str | None
) -> dict[str, Any]:
    """The JSON document for one label: the parsed matrix plus where it came from."""
    source = {"repo": repo, "path": path, "commit": commit, "header": parsed["header"]}
    if note:
        source["note"] = note
    return {
        "label": label,
        "source": source,
        "opset_min": parsed["opset_min"],
        "opset_max": parsed["opset_max"],
        "operators": parsed["operators"],
    }


def render(document: dict[str, Any]) -> str:
    """Serialise with sorted keys, top-level keys indented by one space, one operator a line."""

    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    lines = ["{"]
    keys = sorted(document)
    for index, key in enumerate(keys):
        comma = "," if index < len(keys) - 1 else ""
        if key != "operators":
            lines.append(f" {dump(key)}: {dump(document[key])}{comma}")
            continue
        lines.append(' "operators": {')
        names = sorted(document["operators"])
        for position, name in enumerate(names):
            entry_comma = "," if position < len(names) - 1 else ""
            lines.append(f" {dump(name)}: {dump(document['operators'][name])}{entry_comma}")
        lines.append(f" }}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "markdown",
        nargs="?",
        default="-",
        help="path of a saved operators.md, or '-' (the default) to read it from stdin",
    )
    parser.add_argument(
        "--repo",
        default="onnx/onnx-tensorrt",
        help="repository the markdown was read from, recorded in source.repo",
    )
    parser.add_argument(
        "--path",
        default="docs/operators.md",
        help="path of the markdown inside that repository, recorded in source.path",
    )
    parser.add_argument(
        "--commit",
        required=True,
        help="40-hex commit the markdown was read at, recorded in source.commit",
    )
    parser.add_argument(
        "--label",
        help="TensorRT version family the file stands for (default: the version in the header)",
    )
    parser.add_argument(
        "--note",
        help="why this matrix stands for --label when the header names another version",
    )
    parser.add_argument(
        "--output",
        default="-",
        help="where to write the JSON; '-' (the default) writes to stdout",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not re.fullmatch(r"[0-9a-f]{40}", args.commit):
        logger.error("--commit must be a 40-hex commit id; got %r", args.commit)
        return 2

    text = sys.stdin.read() if args.markdown == "-" else Path(args.markdown).read_text()
    try:
        parsed = parse_operators_md(text)
    except ValueError as error:
        logger.error("%s", error)
        return 1

    label = args.label or parsed["trt_version"]
    if label != parsed["trt_version"] and not args.note:
        logger.error(
            "--label %s differs from the header's TensorRT %s; say why with --note",
            label,
            parsed["trt_version"],
        )
        return 2
    document = support_file(
        parsed, repo=args.repo, path=args.path, commit=args.commit, label=label, note=args.note
    )
    output = render(document)
    if args.output == "-":
        sys.stdout.write(output)
    else:
        Path(args.output).write_text(output)
        logger.info(
            "Wrote %s: %d operators, opset %d to %d",
            Path(args.output).name,
            len(parsed["operators"]),
            parsed["opset_min"],
            parsed["opset_max"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
