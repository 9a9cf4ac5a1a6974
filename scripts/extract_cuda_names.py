"""List the names and call signatures of cuda-python's `cuda.bindings.runtime` for the static check.

`tests/engines/test_tensorrt_usage.py` checks every `cudart.X` our code uses against this list
(and the number of positional arguments of each call against the signature), so CI needs no
cuda-python. The module imports and answers these questions without a GPU or a driver.
Run from the repository root, with the cuda-python version to record installed:

    .venv/bin/pip install "cuda-python==13.*" && .venv/bin/python scripts/extract_cuda_names.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "engines"
# the first docstring line of a binding function: name(arg, type arg, arg: type, ...)
SIGNATURE = re.compile(r"^(\w+)\((.*)\)\s*$")


def parameters(doc: str) -> list[str] | None:
    """The parameter names of a binding function, from its docstring's first line."""
    match = SIGNATURE.match(doc.strip().splitlines()[0]) if doc and doc.strip() else None
    if match is None:
        return None
    text = match.group(2).strip()
    return [part.split(":")[0].split()[-1] for part in text.split(",")] if text else []


def main() -> None:
    import cuda.bindings
    from cuda.bindings import runtime as cudart

    names, signatures = [], {}
    for name in sorted(n for n in dir(cudart) if not n.startswith("_")):
        names.append(name)
        value = getattr(cudart, name)
        if isinstance(value, type):
            # members of the class itself (enum values, struct fields, methods), not inherited
            # ones of int or object; an enum's `name` and `value` come from its base and stay
            inherited = {n for t in value.__mro__[1:] for n in dir(t)} - {"name", "value"}
            names += [
                f"{name}.{member}"
                for member in sorted(dir(value))
                if not member.startswith("_") and member not in inherited
            ]
        elif callable(value) and (params := parameters(value.__doc__ or "")) is not None:
            signatures[name] = params
    version = cuda.bindings.__version__
    path = OUTPUT_DIR / f"cuda_bindings_runtime_{version.split('.')[0]}.json"
    record = {"module": "cuda.bindings.runtime", "cuda-bindings": version}
    record |= {"names": names, "signatures": signatures}
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"wrote {len(names)} names and {len(signatures)} signatures to {path}")


if __name__ == "__main__":
    main()
