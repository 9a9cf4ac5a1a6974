"""Benchmark transduce against CPU peers: `transduce bench` as a script.

Every option of `transduce bench` applies (see `transduce bench --help`). Example:
    .venv/bin/python scripts/benchmark.py --output results/bench-base
"""

import sys

from transduce.cli import main

if __name__ == "__main__":
    # -v may come anywhere; the command line parser wants it before the subcommand
    verbose = [arg for arg in sys.argv[1:] if arg in ("-v", "--verbose")]
    sys.exit(main([*verbose, "bench", *(arg for arg in sys.argv[1:] if arg not in verbose)]))
