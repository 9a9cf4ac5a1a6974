"""Benchmark engines, each run in a worker process of its own.

`python -m transduce.bench_engines` is the worker: the driver (transduce/commands/bench.py)
sends one JSON object per line on its stdin and reads one reply per line from its stdout:

    {"cmd": "load", "engine": "ctranslate2-int8", "artifacts": {...}, "threads": 2}
    {"cmd": "run", "src": [[ids], ...], "max_new_tokens": 32, "min_new_tokens": 32,
     "beam_size": 1, "return_tokens": false}
    {"cmd": "quit"}

A worker loads one engine and nothing else, so its peak RSS, thread count and CPU time belong
to that engine alone, and no engine's thread pool competes with another's: the driver runs
one request at a time across all workers. Replies carry wall and CPU seconds of the request,
the engine's own timings where it has them, and the generated ids when asked.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TRANSDUCE_ENGINES = ("torch", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8")
PEER_ENGINES = ("ctranslate2-fp32", "ctranslate2-int8", "transformers")
ENGINES = (*TRANSDUCE_ENGINES, "tensorrt", *PEER_ENGINES)


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (package missing, no GPU, artifact missing); says why."""


@dataclass(frozen=True)
class Request:
    """One timed request: one or more batches served back to back."""

    batches: list[list[list[int]]]  # per batch, source ids per row (EOS included, no padding)
    max_new_tokens: int
    min_new_tokens: int  # EOS banned before this many tokens; = max_new_tokens: fixed work
    beam_size: int
    return_tokens: bool


class Engine(abc.ABC):
    """One engine under test, loaded in its worker process."""

    threads: int

    @abc.abstractmethod
    def run(self, src: list[list[int]], request: Request) -> dict:
        """Decode one batch; returns {"tokens": [[ids]], and the timings the engine has}."""

    def describe(self) -> dict:
        """Versions and settings worth recording beside the numbers."""
        return {}


class TransduceEngine(Engine):
    """A transduce backend driven by runtime/generate.py (torch, ONNX Runtime, TensorRT)."""

    def __init__(self, backend, threads: int, settings: dict) -> None:
        self.backend, self.threads, self.settings = backend, threads, settings
        self._sessions: list = []
        original_start = backend.start

        # keep a handle on each session to read its graph time after the request
        def start(*args, **kwargs):
            session = original_start(*args, **kwargs)
            self._sessions.append(session)
            return session

        backend.start = start

    def run(self, src: list[list[int]], request: Request) -> dict:
        from transduce.runtime.generate import GenerationConfig, generate

        self._sessions.clear()
        config = GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.min_new_tokens,
            beam_size=request.beam_size,
        )
        result = generate(self.backend, src, config)
        timings = result.timings
        graph = [getattr(s, "graph_seconds", None) for s in self._sessions]
        return {
            "tokens": result.tokens,
            "encode_seconds": timings.encode_seconds,
            "first_token_seconds": timings.first_token_seconds,
            "step_seconds": timings.step_seconds,
            "graph_seconds": None if None in graph else sum(graph),
        }

    def describe(self) -> dict:
        return self.settings


class CTranslate2Engine(Engine):
    """A CTranslate2 Translator on the converted weights (see transduce/peers.py)."""

    def __init__(self, model_dir: str, compute_type: str, threads: int) -> None:
        import threading

        import ctranslate2

        self.threads = threads
        self.version = ctranslate2.__version__
        self.compute_type = compute_type
        built: dict = {}

        # NOTE: the translator is built on a thread of its own, not on the main thread, which
        # is said to throttle its OpenMP workers on 2-core machines. Our A/B of the two (base
        # model, batch 16, intra_threads=2) was inconclusive: under heavy load the main-thread
        # build used 0.50-0.66 cores against 0.97-1.00, at moderate load both used 1.25-1.32.
        # In the benchmark this build uses 1.9-2.0 cores; the report prints it per engine.
        def build() -> None:
            built["translator"] = ctranslate2.Translator(
                model_dir,
                device="cpu",
                compute_type=compute_type,
                inter_threads=1,
                intra_threads=threads,
            )

        thread = threading.Thread(target=build, name="ctranslate2-build")
        thread.start()
        thread.join()
        self.translator = built["translator"]

    def run(self, src: list[list[int]], request: Request) -> dict:
        from transduce.peers import id_tokens, token_ids

        sources = [id_tokens(row) for row in src]
        results = self.translator.translate_batch(
            sources,
            beam_size=request.beam_size,
            max_batch_size=len(sources),
            max_decoding_length=request.max_new_tokens,
            min_decoding_length=request.min_new_tokens,
            length_penalty=1.0,
            return_end_token=True,
            return_scores=False,
        )
        return {"tokens": [token_ids(r.hypotheses[0]) for r in results]}

    def describe(self) -> dict:
        return {"ctranslate2": self.version, "compute_type": self.compute_type}


class TransformersEngine(Engine):
    """Hugging Face transformers: generate() of a MarianMTModel holding the same weights."""

    def __init__(self, checkpoint: str, threads: int) -> None:
        import torch
        import transformers

        from transduce.model.checkpoint import load_checkpoint
        from transduce.peers import marian_from_model

        torch.set_num_threads(threads)
        self.threads, self.torch = threads, torch
        self.version = transformers.__version__
        self.model = marian_from_model(load_checkpoint(checkpoint))
        self.pad_id = self.model.config.pad_token_id
        self.start_id = self.model.config.decoder_start_token_id

    def run(self, src: list[list[int]], request: Request) -> dict:
        torch = self.torch
        width = max(len(row) for row in src)
        ids = torch.full((len(src), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(src):
            ids[i, : len(row)] = torch.tensor(row)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=ids != self.pad_id,
                max_new_tokens=request.max_new_tokens,
                min_new_tokens=request.min_new_tokens,
                num_beams=request.beam_size,
                do_sample=False,
                **(
                    {"length_penalty": 1.0, "early_stopping": True} if request.beam_size > 1 else {}
                ),
            )
        tokens = []
        for row in out[:, 1:].tolist():  # drop the start token
            if self.model.config.eos_token_id in row:
                row = row[: row.index(self.model.config.eos_token_id) + 1]
            tokens.append(row)
        return {"tokens": tokens}

    def describe(self) -> dict:
        return {
            "transformers": self.version,
            "torch": self.torch.__version__,
            "attention": getattr(self.model.config, "_attn_implementation", None),
        }


def _onnxruntime_engine(engine: str, artifacts: dict, threads: int) -> Engine:
    import onnxruntime

    from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend

    variant = engine.split("-", 1)[1]
    directory = artifacts.get(f"onnx-{variant}")
    if not directory or not Path(directory, "manifest.json").is_file():
        raise EngineUnavailable(f"no {variant} export was prepared ({directory})")
    backend = OnnxRuntimeBackend(directory, threads=threads)
    return TransduceEngine(
        backend, threads, {"onnxruntime": onnxruntime.__version__, "export": Path(directory).name}
    )


def _torch_engine(artifacts: dict, threads: int) -> Engine:
    import torch

    from transduce.model.checkpoint import load_checkpoint
    from transduce.model.torch_backend import TorchBackend

    torch.set_num_threads(threads)
    backend = TorchBackend(load_checkpoint(artifacts["checkpoint"]))
    return TransduceEngine(backend, threads, {"torch": torch.__version__})


def _tensorrt_engine(artifacts: dict, threads: int) -> Engine:
    directory = artifacts.get("tensorrt")
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        raise EngineUnavailable(f"tensorrt is not installed ({error})") from error
    if not directory:
        raise EngineUnavailable("no TensorRT engine directory given (transduce build ...)")
    from transduce.runtime.tensorrt_backend import TensorRTBackend

    return TransduceEngine(TensorRTBackend(directory), threads, {"engines": Path(directory).name})


def load_engine(engine: str, artifacts: dict, threads: int) -> Engine:
    """Construct `engine` from the prepared artifacts.

    Raises:
        EngineUnavailable: a package, a device or an artifact is missing.
    """
    try:
        if engine == "torch":
            return _torch_engine(artifacts, threads)
        if engine.startswith("onnxruntime-"):
            return _onnxruntime_engine(engine, artifacts, threads)
        if engine == "tensorrt":
            return _tensorrt_engine(artifacts, threads)
        if engine.startswith("ctranslate2-"):
            variant = engine.split("-", 1)[1]
            directory = artifacts.get(f"ct2-{variant}")
            if not directory:
                raise EngineUnavailable(f"no CTranslate2 {variant} model was prepared")
            compute_type = {"fp32": "float32", "int8": "int8"}[variant]
            return CTranslate2Engine(directory, compute_type, threads)
        if engine == "transformers":
            return TransformersEngine(artifacts["checkpoint"], threads)
    except ImportError as error:
        raise EngineUnavailable(f"{engine} needs a package that is missing: {error}") from error
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB.

    From /proc/self/status (VmRSS, VmHWM): getrusage's ru_maxrss would carry over the
    parent's peak across fork and exec, so every worker would report the driver's size.
    """
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, kib, _ = line.split()
                values[name[:-1]] = int(kib) / 1024
    return values["VmRSS"], values["VmHWM"]


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _merge(results: list[dict]) -> dict:
    """The per-batch results of one request as one: sums, concatenations, the first TTFT."""
    merged = {"tokens": [row for r in results for row in r["tokens"]]}
    for key in ("encode_seconds", "graph_seconds"):
        values = [r.get(key) for r in results]
        merged[key] = None if None in values else sum(values)
    merged["first_token_seconds"] = results[0].get("first_token_seconds")
    steps = [r.get("step_seconds") for r in results]
    merged["step_seconds"] = None if None in steps else [s for r in steps for s in r]
    return merged


def _serve_request(engine: Engine, message: dict) -> dict:
    request = Request(
        batches=message["batches"],
        max_new_tokens=message["max_new_tokens"],
        min_new_tokens=message["min_new_tokens"],
        beam_size=message["beam_size"],
        return_tokens=message["return_tokens"],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = _merge([engine.run(src, request) for src in request.batches])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = result.pop("tokens")
    result.update(
        ok=True,
        seconds=wall,
        cpu_seconds=cpu,
        generated=sum(len(row) for row in tokens),
        requests=len(request.batches),
        threads_alive=_thread_count(),
        peak_rss_mib=_rss_mib()[1],
    )
    if request.return_tokens:
        result["tokens"] = tokens
    return result


def measure_gemm(shapes: dict, threads: int, repeats: int = 7) -> dict:
    """This machine's matmul rate, and the weight-matmul floor of one decoder step.

    Args:
        shapes: {"d_model", "d_ff", "vocab", "layers", "rows": [row counts]}.
        threads: torch and numpy threads (numpy's BLAS reads its variables at import, so the
            driver sets them in this worker's environment).

    Returns:
        {"peak_gflops": {"torch": .., "numpy": ..}, "floor_step_seconds": {rows: seconds}}:
        the floor is the best time of the step's weight matmuls alone (every decoder layer's
        six D x D projections and two feed-forward matmuls, and the output layer) with torch
        or numpy, the same shapes the engines multiply, on weights as large as the model's.
    """
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    D, F, V, n = shapes["d_model"], shapes["d_ff"], shapes["vocab"], shapes["layers"]
    generator = torch.Generator().manual_seed(0)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    # peak rate: a square product large enough to be compute-bound
    size = 1024
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    flops = 2 * size**3
    peak = {
        "torch": flops / best(lambda: a @ b) / 1e9,
        "numpy": flops / best(lambda: np.matmul(a.numpy(), b.numpy())) / 1e9,
    }

    # one decoder step's weights, (out, in) like nn.Linear; separate per layer as in the model
    weights = []
    for _ in range(n):
        weights += [torch.randn(D, D, generator=generator) for _ in range(6)]
        weights += [torch.randn(F, D, generator=generator), torch.randn(D, F, generator=generator)]
    weights.append(torch.randn(V, D, generator=generator))
    floor = {}
    arrays = [w.numpy().T for w in weights]  # (in, out) views for numpy's x @ w
    for rows in shapes["rows"]:
        x_d, x_f = torch.randn(rows, D), torch.randn(rows, F)
        n_d, n_f = x_d.numpy(), x_f.numpy()

        def with_torch(x_d=x_d, x_f=x_f) -> None:
            for w in weights:
                torch.nn.functional.linear(x_f if w.shape[1] == F else x_d, w)

        def with_numpy(x_d=n_d, x_f=n_f) -> None:
            for w in arrays:
                np.matmul(x_f if w.shape[0] == F else x_d, w)

        # the floor is the best of the libraries and of 1 or all threads: small products can
        # lose more to thread wake-ups than they gain from a second core
        times = [best(with_numpy)]
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            times.append(best(with_torch))
        torch.set_num_threads(threads)
        floor[str(rows)] = min(times)
    return {"peak_gflops": peak, "floor_step_seconds": floor}


def serve(commands, reply) -> None:
    """The worker loop: one JSON command in, one JSON reply out, until "quit"."""
    engine: Engine | None = None
    for line in commands:
        message = json.loads(line)
        try:
            if message["cmd"] == "quit":
                return
            if message["cmd"] == "load":
                start = time.perf_counter()
                engine = load_engine(message["engine"], message["artifacts"], message["threads"])
                load_seconds = time.perf_counter() - start
                rss, peak = _rss_mib()
                reply(
                    {
                        "ok": True,
                        "load_seconds": load_seconds,
                        "rss_mib": rss,
                        "peak_rss_mib": peak,
                        "settings": engine.describe(),
                    }
                )
            elif message["cmd"] == "run":
                if engine is None:
                    raise ValueError("run before load: send a load command first")
                reply(_serve_request(engine, message))
            elif message["cmd"] == "gemm":
                reply({"ok": True, **measure_gemm(message["shapes"], message["threads"])})
            else:
                raise ValueError(f"unknown command {message['cmd']!r}")
        except EngineUnavailable as error:
            reply({"ok": False, "unavailable": True, "error": str(error)})
        except Exception as error:  # the driver reports it; the worker stays usable
            reply({"ok": False, "error": f"{type(error).__name__}: {error}"})
            logger.debug("%s", traceback.format_exc())


def main() -> None:
    # the protocol owns the real stdout; anything a library prints goes to stderr instead
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=os.environ.get("TRANSDUCE_BENCH_LOG", "WARNING"),
        format="worker %(process)d %(levelname)s %(name)s: %(message)s",
    )

    def reply(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")

    serve(sys.stdin, reply)


if __name__ == "__main__":
    main()
