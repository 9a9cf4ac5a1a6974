"""Build FP16 TensorRT engines from an FP16 export directory: `transduce build` as a script.

Every option of `transduce build` applies (see `transduce build --help`). Example:
    .venv/bin/python scripts/build_engines.py artifacts/demo-fp16 --output artifacts/demo-trt
"""

import sys

from transduce.commands.build import main

if __name__ == "__main__":
    sys.exit(main())
