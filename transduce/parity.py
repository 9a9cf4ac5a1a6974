"""Parity, layer by layer: graphs against the reference, then tokens against the golden decoders.

Layer 1: torch fp32 vs ONNX Runtime fp32, per output of each graph (names, shapes, values).
Layer 2: the FP16 graphs vs torch fp32, per output, with a tolerance table.
Layer 3: tokens: the runtime (any backend) against the golden greedy and beam decoders.
Values are compared with Polygraphy's comparator; every verdict carries its measured numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch
from polygraphy.comparator import IterationResult, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from transduce.export.contract import decoder_io, encoder_io
from transduce.export.graphs import DecoderStepGraph, EncoderGraph
from transduce.model.golden import Hypothesis, beam_search, greedy
from transduce.model.threads import torch_threads
from transduce.model.transformer import Transformer
from transduce.runtime.backend import Backend
from transduce.runtime.generate import GenerationConfig, generate_many

logger = logging.getLogger(__name__)
G_LOGGER.module_severity = G_LOGGER.ERROR  # Polygraphy's per-output chatter; we print verdicts

# (atol, rtol) per output name; "" is the default. Values measured with `transduce parity` on
# the demo model and the tiny test models are in README.md ("Parity"); each threshold keeps a
# margin of about 3x over the largest measured difference.
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "float32": {"": (1e-4, 1e-4)},
    "float16": {
        "": (2e-2, 2e-2),  # keys, values (fp16 storage: ~1e-3 relative)
        "log_probs": (5e-2, 1e-2),
        "top_log_probs": (5e-2, 1e-2),
        "top_ids": (0, 0),  # exact, except where the reference has a near-tie (see below)
        "src_mask": (0, 0),
    },
}


@dataclass(frozen=True)
class OutputVerdict:
    graph: str
    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    atol: float
    rtol: float
    passed: bool

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        return (
            f"{status} {self.graph}.{self.name} {self.shape}: max_abs={self.max_abs:.2e} "
            f"mean_abs={self.mean_abs:.2e} (atol={self.atol:g}, rtol={self.rtol:g})"
        )


@dataclass(frozen=True)
class Divergence:
    """Where a runtime's tokens first differ from the reference's."""

    row: int
    step: int
    expected: int
    actual: int
    margin: float  # the reference's top-1 minus top-2 log-probability at that step

    def line(self) -> str:
        return (
            f"row {self.row} step {self.step}: expected {self.expected}, got {self.actual} "
            f"(reference top-2 margin {self.margin:.2e})"
        )


@dataclass
class TokenVerdict:
    backend: str
    mode: str
    total: int
    identical: int
    divergences: list[Divergence] = field(default_factory=list)
    min_identical_fraction: float = 1.0

    @property
    def fraction(self) -> float:
        return self.identical / self.total

    @property
    def passed(self) -> bool:
        return self.fraction >= self.min_identical_fraction

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        return (
            f"{status} tokens {self.backend} {self.mode}: {self.identical}/{self.total} "
            f"identical ({100 * self.fraction:.2f} %, required "
            f"{100 * self.min_identical_fraction:.1f} %)"
        )


def _compare(graph: str, expected: dict, actual: dict, tolerances: dict) -> list[OutputVerdict]:
    """Per-output verdicts of actual vs expected (dicts of name -> array, same names)."""
    missing = sorted(set(expected) ^ set(actual))
    if missing:
        raise ValueError(f"{graph}: outputs differ in names: {missing}")
    default = tolerances[""]
    atol = {name: tolerances.get(name, default)[0] for name in expected}
    rtol = {name: tolerances.get(name, default)[1] for name in expected}
    compare = SimpleCompareFunc(atol=atol, rtol=rtol, check_shapes=True, check_error_stat="max")
    results = compare(
        IterationResult(
            {k: np.ascontiguousarray(v) for k, v in expected.items()}, runner_name="torch"
        ),
        IterationResult(
            {k: np.ascontiguousarray(v) for k, v in actual.items()}, runner_name="onnx"
        ),
    )
    verdicts = []
    for name, result in results.items():
        verdicts.append(
            OutputVerdict(
                graph,
                name,
                tuple(np.shape(actual[name])),
                float(result.max_absdiff),
                float(result.mean_absdiff),
                atol[name],
                rtol[name],
                bool(result),
            )
        )
    return verdicts


def graph_feeds(model: Transformer, src_tokens: torch.Tensor, steps: int, seed: int = 0):
    """Encoder and decoder-step inputs for a realistic mid-decoding state.

    The cache is filled by running the fp32 step graph `steps` times on random target tokens,
    so the decoder is compared at position P = steps with a cache of real keys and values.
    """
    n = model.config.n_decoder_layers
    B = src_tokens.shape[0]
    capacity = steps + 2
    encoder = EncoderGraph(model).eval()
    decoder = DecoderStepGraph(model, top_k=1).eval()
    generator = torch.Generator().manual_seed(seed)
    tgt = torch.randint(3, model.config.tgt_vocab_size, (B, steps + 1), generator=generator)
    with torch.no_grad():
        src_mask, *cross = encoder(src_tokens)
        H, Dh = model.config.n_heads, model.config.head_dim
        cache = [torch.zeros(B, H, capacity, Dh) for _ in range(2 * n)]
        for step in range(steps):
            outputs = decoder(
                tgt[:, step : step + 1], torch.tensor([step]), src_mask, *cross, *cache
            )
            for slot, new in zip(cache, outputs[3:], strict=True):
                slot[:, :, step] = new[:, :, 0]
    encoder_feed = {"src_tokens": src_tokens.numpy()}
    names = decoder_io(n)[0]
    values = [tgt[:, steps : steps + 1], torch.tensor([steps]), src_mask, *cross, *cache]
    decoder_feed = dict(zip(names, (v.numpy() for v in values), strict=True))
    return encoder_feed, decoder_feed


def _torch_outputs(module, feed: dict, output_names: list[str]) -> dict:
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(v) for v in feed.values()))
    return {name: out.numpy() for name, out in zip(output_names, outputs, strict=True)}


def compare_graphs(
    model: Transformer, export_dir, manifest: dict, src_tokens: torch.Tensor, steps: int = 4
) -> list[OutputVerdict]:
    """Layers 1 and 2: every output of both graphs of an export against torch fp32."""
    precision = manifest["precision"]["dtype"]
    tolerances = TOLERANCES[precision]
    n = model.config.n_decoder_layers
    encoder_feed, decoder_feed = graph_feeds(model, src_tokens, steps)
    top_k = manifest["top_k"]

    verdicts = []
    graphs = {
        "encoder": (EncoderGraph(model), encoder_feed, encoder_io(n)[1]),
        "decoder": (DecoderStepGraph(model, top_k), decoder_feed, decoder_io(n)[1]),
    }
    for name, (module, feed, output_names) in graphs.items():
        expected = _torch_outputs(module.eval(), feed, output_names)
        # the FP16 graphs take their float inputs in FP16; the reference stays fp32
        onnx_feed = {
            k: v.astype(np.float16) if v.dtype == np.float32 and precision == "float16" else v
            for k, v in feed.items()
        }
        session = ort.InferenceSession(
            str(export_dir / manifest["graphs"][name]["file"]), providers=["CPUExecutionProvider"]
        )
        actual = dict(zip(output_names, session.run(output_names, onnx_feed), strict=True))
        actual = {
            k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in actual.items()
        }
        if precision == "float16" and "top_ids" in actual:
            _excuse_near_ties(expected, actual)
        verdicts += _compare(name, expected, actual, tolerances)
    return verdicts


def _excuse_near_ties(expected: dict, actual: dict, margin: float = 1e-2) -> None:
    """Where the reference's candidates are within `margin`, FP16 may order them differently.

    The reference's own ids are kept at such positions (in place, in `actual`), so top_ids is
    compared exactly everywhere a rounding error cannot explain the difference.
    """
    values = expected["top_log_probs"]
    ties = np.zeros_like(values, dtype=bool)
    ties[:, 1:] |= np.diff(values, axis=1) > -margin
    ties[:, :-1] |= np.diff(values, axis=1) > -margin
    actual["top_ids"] = np.where(ties, expected["top_ids"], actual["top_ids"])


def golden_hypotheses(
    model: Transformer, sources: list[list[int]], config: GenerationConfig, batch_size: int = 250
) -> list[Hypothesis]:
    """The golden decoder's best hypothesis for each source (greedy, or beam when K > 1)."""
    with torch_threads(1):
        return _golden_hypotheses(model, sources, config, batch_size)


def _golden_hypotheses(model, sources, config, batch_size) -> list[Hypothesis]:
    results = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        width = max(len(s) for s in chunk)
        src = torch.tensor([s + [model.config.pad_id] * (width - len(s)) for s in chunk])
        if config.beam_size == 1:
            results += greedy(model, src, config.max_new_tokens)
        else:
            beams = beam_search(
                model,
                src,
                beam_size=config.beam_size,
                max_new_tokens=config.max_new_tokens,
                length_penalty=config.length_penalty,
            )
            results += [row[0] for row in beams]
    return results


def _reference_margin(model: Transformer, source: list[int], prefix: list[int]) -> float:
    """Top-1 minus top-2 log-probability of the reference after `prefix` (golden path)."""
    src = torch.tensor([source])
    tgt = torch.tensor([[model.config.bos_id] + prefix])
    with torch.no_grad(), torch_threads(1):
        cross_kv = model.cross_keys_values(model.encode(src))
        logits = model.decode(tgt, cross_kv, model.source_mask(src))[0, -1]
        top = torch.log_softmax(logits.float(), -1).topk(2).values
    return float(top[0] - top[1])


def compare_tokens(
    model: Transformer,
    backend: Backend,
    sources: list[list[int]],
    config: GenerationConfig,
    references: list[Hypothesis],
    *,
    min_identical_fraction: float = 1.0,
    max_reported: int = 10,
    progress: bool = False,
) -> tuple[TokenVerdict, list[list[int]]]:
    """Layer 3: the runtime's best tokens per source against the golden ones.

    Returns the verdict and the runtime's token lists (for task-level scoring).
    """
    outputs = [row[0].tokens for row in generate_many(backend, sources, config, progress=progress)]
    mode = "greedy" if config.beam_size == 1 else f"beam{config.beam_size}"
    verdict = TokenVerdict(
        backend.name, mode, len(sources), 0, min_identical_fraction=min_identical_fraction
    )
    for row, (actual, reference) in enumerate(zip(outputs, references, strict=True)):
        if actual == reference.tokens:
            verdict.identical += 1
            continue
        if len(verdict.divergences) >= max_reported:
            continue
        step = next(
            (i for i, (a, e) in enumerate(zip(actual, reference.tokens, strict=False)) if a != e),
            min(len(actual), len(reference.tokens)),
        )
        expected_token = reference.tokens[step] if step < len(reference.tokens) else -1
        actual_token = actual[step] if step < len(actual) else -1
        margin = _reference_margin(model, sources[row], reference.tokens[:step])
        verdict.divergences.append(Divergence(row, step, expected_token, actual_token, margin))
    return verdict, outputs
