"""The `transduce` command: one subcommand per stage of the pipeline.

transduce demo            # train (once) or load the demo model, then show it working
transduce train-demo      # train the demo model and report its accuracy
"""

from __future__ import annotations

import argparse
import logging
import sys

from transduce.commands import (
    bench,
    build,
    demo,
    export,
    generate,
    import_model,
    parity,
    selfcheck,
    train_demo,
)

COMMANDS = {
    "demo": demo,
    "train-demo": train_demo,
    "export": export,
    "generate": generate,
    "parity": parity,
    "import": import_model,
    "build": build,
    "selfcheck": selfcheck,
    "bench": bench,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transduce",
        description="A Transformer encoder-decoder from PyTorch to ONNX Runtime and TensorRT.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = subparsers.add_parser(
            name, help=module.__doc__.splitlines()[0], description=module.__doc__
        )
        module.add_arguments(sub)
    # WORKAROUND: argparse cannot match a "*" positional (generate's sources) that comes after
    # an option of a subcommand; such leftovers are taken as sources, anything else is an error
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "sources") and not any(e.startswith("-") for e in extras):
        args.sources = [*args.sources, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # the exporter's own passes log every rewrite at INFO; keep their warnings only
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("transduce").error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
