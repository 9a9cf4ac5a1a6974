"""List the names that TensorRT's Python bindings expose, one file per TensorRT version.

Run from the repository root (no GPU and no TensorRT libraries needed):

    .venv/bin/python scripts/extract_tensorrt_names.py 10.15.* 10.16.* 11.0.* 11.*

Each argument is a version of the `tensorrt-<cuda>-bindings` wheel: an exact one (`10.16.1.11`)
or a pip wildcard (`10.16.*` picks the newest 10.16.x). For each one the script downloads the
wheel with `pip download --no-deps` into a temporary folder (nothing is installed), unzips it,
and writes `engines/tensorrt_names/<exact version>.txt`: a first comment line naming the wheel
(name==version, sha256, method), then the sorted names, one a line.

Two methods, chosen with `--method` (`auto` tries `import`, then falls back to `strings`):

* `import` (exact, fully qualified). The binding module `tensorrt_bindings/tensorrt.so` links
  only a dozen functions of `libnvinfer`, `libnvinfer_plugin` and `libnvonnxparser`, and its
  module initialisation calls none of them. The script compiles empty stand-ins for those
  libraries with the C compiler (each function returns 0), imports `tensorrt_bindings` in a
  subprocess with them on `LD_LIBRARY_PATH`, and walks `dir()`: the module (`Builder`,
  `float16`, `nptype`), its classes (`IBuilderConfig.set_flag`, `BuilderFlag.TF32`, inherited
  members included) and classes nested in those (`ILogger.Severity.WARNING`). The Python-level
  additions of `tensorrt_bindings/__init__.py` (`__version__`, `volume`, `nptype`,
  `DataType.itemsize`, `Logger.Severity`, `Logger.WARNING`, ...) come with the import. Nothing
  of TensorRT itself runs: calling a builder or runtime would fail. Names that start with `_`
  are left out, except `__version__`; so are modules that the front end's
  `from tensorrt_bindings import *` would drag along (`os`, `sys`, ...).
* `strings` (flat, approximate). Without a C compiler, or when the import fails, the names are
  read from the `.rodata` section of `tensorrt.so`: every NUL-terminated string that is a Python
  identifier (pybind11 stores class, method, property, argument and enum value names as such
  strings) and its tails that start at a word boundary (`INCLUDE_REFIT` gives `REFIT`, see
  below), plus the components of the Python-level names that `tensorrt_bindings/__init__.py`
  defines (read with `ast`). The output is flat on purpose: the binary holds no signatures
  (pybind11 builds `set_flag(self: tensorrt.tensorrt.IBuilderConfig, ...)` at run time from
  type descriptors, so no `tensorrt.tensorrt.` string exists), and the `Class.member` pairs in
  hand-written docstrings are no evidence (11.4 still documents `1 << BuilderFlag.FP16`, a
  member it no longer has). Caveats: the linker merges a string into the tail of a longer one,
  so a present name can be missing (`INT8` exists only inside `UINT8`, `mark_output` inside
  `unmark_output`: about 100 of 2100 qualified names of 11.4 had a component missed);
  argument names, C++ names and the word-boundary tails make absent names look present (about
  half the strings list is no Python name); enum members copied at run time (`Logger.WARNING`)
  are not told apart. `strings -n 4` also skips names of 3 characters or fewer; this method
  reads them, but they match many unrelated strings, so treat a short name here as unchecked.

The front-end package (`tensorrt-cu13` sdist) only does `from tensorrt_bindings import *` and
imports `__version__` (checked for 10.15, 10.16, 11.0 and 11.4); it also ships the subpackage
`tensorrt.plugin`, listed here as `plugin` when the bindings wheel has it. Wheels are built per
Python version: pip picks the one for the interpreter that runs this script, and the `import`
method needs that same interpreter.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger("extract_tensorrt_names")

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Itanium-mangled names (`_ZN8nvinfer1...`, typeinfo names such as `N8nvinfer111BuilderFlagE`).
MANGLED = re.compile(r"_Z\w*|(?:[NPFKR]|St)\w*\d\w*E")
# Where a name can start inside a longer identifier: after `_`, or lower case then upper case.
WORD_START = re.compile(r"(?<=_)[A-Za-z]|(?<=[a-z0-9])[A-Z]|^")
MAX_NAME_LENGTH = 80

# Run in the subprocess: import the bindings and print every public attribute chain as JSON.
INTROSPECT = """
import json, types
import tensorrt_bindings as module
names = {"__version__"}
def walk(prefix, obj, depth):
    for attr in dir(obj):
        if attr.startswith("_"):
            continue
        value = getattr(obj, attr, None)
        if isinstance(value, types.ModuleType):
            continue
        names.add(prefix + attr)
        if depth < 2 and isinstance(value, type) and value.__module__.startswith("tensorrt"):
            walk(prefix + attr + ".", value, depth + 1)
walk("", module, 0)
print(json.dumps(sorted(names)))
"""


def download_wheel(spec: str, cuda_variants: list[str], dest: Path, pip: list[str]) -> Path:
    """Download the bindings wheel for `spec`, trying each CUDA variant in turn.

    Args:
        spec: An exact version or a pip wildcard such as `10.16.*`.
        cuda_variants: Variants to try in order, such as `["cu13", "cu12"]`.
        dest: Empty folder to download into.
        pip: Command that runs pip.

    Returns:
        The path of the downloaded wheel.

    Raises:
        RuntimeError: When no variant has a wheel for `spec`.
    """
    for cuda in cuda_variants:
        requirement = f"tensorrt-{cuda}-bindings=={spec}"
        folder = dest / cuda
        cmd = [*pip, "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder)]
        logger.info("pip download %s", requirement)
        result = subprocess.run([*cmd, requirement], capture_output=True, text=True)
        wheels = sorted(folder.glob("*.whl")) if folder.exists() else []
        if result.returncode == 0 and wheels:
            return wheels[0]
        logger.warning("no wheel for %s: %s", requirement, result.stderr.strip()[-300:])
    raise RuntimeError(f"no tensorrt-<cuda>-bindings wheel matches =={spec} for {cuda_variants}")


def build_stub_libraries(folder: Path, libraries: set[str], symbols: set[str], cc: str) -> None:
    """Compile one empty shared library per name, each defining every symbol as `return 0`."""
    source = folder / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in sorted(symbols)))
    for library in libraries:
        cmd = [cc, "-shared", "-fPIC", "-o", str(folder / library), str(source)]
        subprocess.run(cmd, check=True, capture_output=True)


def names_by_import(root: Path, cc: str, timeout: float) -> set[str]:
    """Import the unpacked bindings against stand-in libraries and list their names.

    Args:
        root: Folder holding the unpacked `tensorrt_bindings` package.
        cc: C compiler command.
        timeout: Seconds allowed for each import attempt.

    Returns:
        Every public attribute chain, up to `Class.Nested.member`.

    Raises:
        RuntimeError: When the import fails for a reason other than a missing library or symbol.
    """
    stubs = root / "stubs"
    stubs.mkdir()
    libraries: set[str] = set()
    symbols: set[str] = set()
    env = {**os.environ, "LD_LIBRARY_PATH": str(stubs), "PYTHONPATH": str(root)}
    for _attempt in range(100):
        build_stub_libraries(stubs, libraries, symbols, cc)
        result = subprocess.run(
            [sys.executable, "-c", INTROSPECT],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=root,
        )
        if result.returncode == 0:
            return set(json.loads(result.stdout))
        missing_library = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared", result.stderr)
        missing_symbol = re.search(r"undefined symbol: (\w+)", result.stderr)
        if missing_library:
            libraries.add(missing_library.group(1))
        elif missing_symbol:
            symbols.add(missing_symbol.group(1))
        else:
            raise RuntimeError(f"import failed: {result.stderr.strip()[-1000:]}")
        logger.debug("stubbing %s", (missing_library or missing_symbol).group(1))
    raise RuntimeError("import still fails after stubbing 100 libraries and symbols")


def rodata(blob: bytes) -> bytes:
    """Return the `.rodata*` sections of a 64-bit little-endian ELF file, concatenated."""
    if blob[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    chunks = []
    for name, _type, _flags, _addr, offset, size in headers:
        section = blob[names_offset + name : blob.index(b"\0", names_offset + name)]
        if section.startswith(b".rodata"):
            chunks.append(blob[offset : offset + size])
    return b"\0".join(chunks)


def python_level_names(init_source: str) -> set[str]:
    """Names that `tensorrt_bindings/__init__.py` defines: functions, `X.y = ...` and globals."""
    names = set()
    for node in ast.parse(init_source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                names.add(f"{target.value.id}.{target.attr}")
    return {n for n in names if n == "__version__" or not n.split(".")[-1].startswith("_")}


def names_by_strings(so_path: Path, init_source: str) -> set[str]:
    """Read a flat set of identifiers from the binding's `.rodata` and its `__init__.py`."""
    strings = [s.decode("ascii", "replace") for s in rodata(so_path.read_bytes()).split(b"\0")]
    names = set()
    for string in strings:
        if len(string) > MAX_NAME_LENGTH or not IDENTIFIER.fullmatch(string):
            continue
        if MANGLED.fullmatch(string):
            continue
        # A name merged into the tail of a longer string starts at a word boundary there.
        names.update(string[m.start() :] for m in WORD_START.finditer(string))
    for name in python_level_names(init_source):
        names.update(name.split("."))
    return names


def extract(wheel: Path, work: Path, method: str, cc: str, timeout: float) -> tuple[set[str], str]:
    """Unpack `wheel` into `work` and return its names and the method that produced them."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work)
    so_path = next(work.glob("tensorrt_bindings/tensorrt*.so"))
    extra = {"plugin"} if (work / "tensorrt_bindings/plugin/__init__.py").exists() else set()
    if method in ("auto", "import"):
        try:
            return names_by_import(work, cc, timeout) | extra, "import"
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            if method == "import":
                raise
            logger.warning("import method failed (%s); falling back to strings", error)
    init_source = (work / "tensorrt_bindings/__init__.py").read_text()
    return names_by_strings(so_path, init_source) | extra, "strings"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, extract every requested version and write the name files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "versions",
        nargs="+",
        help="bindings versions: exact (10.16.1.11) or pip wildcards (10.16.*, 11.*)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "engines" / "tensorrt_names",
        help="folder for the <version>.txt files (default: %(default)s)",
    )
    parser.add_argument(
        "--cuda",
        nargs="+",
        default=["cu13", "cu12"],
        help="CUDA variants of tensorrt-<cuda>-bindings to try, in order (default: %(default)s)",
    )
    parser.add_argument(
        "--method",
        choices=["auto", "import", "strings"],
        default="auto",
        help="how to read the names; auto tries import, then strings (default: %(default)s)",
    )
    parser.add_argument(
        "--cc",
        default=os.environ.get("CC", "cc"),
        help="C compiler for the stand-in libraries of the import method (default: $CC or cc)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds allowed for each import attempt (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every stubbed symbol")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    summary = []
    for spec in args.versions:
        with tempfile.TemporaryDirectory(prefix="trt-names-") as temp:
            wheel = download_wheel(spec, args.cuda, Path(temp), pip)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            project, version = wheel.name.split("-")[:2]
            names, method = extract(
                wheel, Path(temp) / "unpacked", args.method, args.cc, args.timeout
            )
        names = {n for n in names if len(n) <= MAX_NAME_LENGTH}
        header = f"# {project.replace('_', '-')}=={version} sha256={digest} method={method}"
        out = args.out_dir / f"{version}.txt"
        out.write_text("\n".join([header, *sorted(names)]) + "\n")
        logger.info("wrote %s: %d names from %s", out, len(names), wheel.name)
        summary.append(f"{out}  {len(names)} names  {method}  {wheel.name}")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
