"""The generation loop, one for every backend: greedy, beam search and sampling.

Semantics match the golden decoders of model/golden.py (the tests hold them to it): decoding
starts from BOS; a row ends at its EOS (included in its tokens and score) or after
max_new_tokens; beam search keeps the 2K best extensions, finishes a hypothesis on an EOS among
the first K, stops a row once K hypotheses have finished, and ranks them by
score / length ** length_penalty. On the step that spends the budget, unfinished beams compete
with the finished hypotheses.

One addition the golden decoders lack: `min_new_tokens` keeps EOS from being chosen for the
first steps (the benchmark sets it to max_new_tokens so that every engine does the same work);
tests/runtime/test_generate.py holds it to a masked copy of golden greedy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from transduce.runtime.backend import Backend, DecodeSession, StepResult
from transduce.runtime.sampling import sample_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. Greedy unless beam_size > 1 or sample is set."""

    max_new_tokens: int = 64
    # EOS cannot be chosen before this many tokens (0: no minimum). With min_new_tokens equal
    # to max_new_tokens every row gets exactly that many tokens: the benchmark's fixed work
    min_new_tokens: int = 0
    beam_size: int = 1  # K
    length_penalty: float = 1.0  # beam ranking: score / length ** length_penalty
    n_best: int = 1  # hypotheses returned per row (beam search)
    sample: bool = False  # draw tokens instead of taking the best
    temperature: float = 1.0
    top_k: int = 0  # sample among the k most likely tokens (0: all)
    top_p: float = 1.0  # sample among the smallest set with this much probability
    seed: int | None = None

    def problems(self) -> list[str]:
        found = []
        if self.max_new_tokens < 1:
            found.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            found.append(
                f"min_new_tokens ({self.min_new_tokens}) must be between 0 and max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if self.beam_size < 1:
            found.append(f"beam_size must be at least 1, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            found.append(
                f"n_best ({self.n_best}) must be between 1 and beam_size ({self.beam_size})"
            )
        if self.sample and self.beam_size > 1:
            found.append("sample and beam_size > 1 cannot be combined; choose one")
        if self.temperature <= 0:
            found.append(f"temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            found.append(f"top_k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            found.append(f"top_p must be in (0, 1], got {self.top_p}")
        return found


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated ids without BOS; ends with EOS unless the budget ran out
    score: float  # sum of the tokens' log-probabilities
    normalized_score: float  # the beam search ranking score


@dataclass
class Timings:
    encode_seconds: float = 0.0
    first_token_seconds: float = 0.0  # from the start of the request to the first step's end
    step_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0


@dataclass
class GenerationResult:
    hypotheses: list[list[Hypothesis]]  # per source row, best first
    timings: Timings

    @property
    def tokens(self) -> list[list[int]]:
        """The best hypothesis of every row."""
        return [row[0].tokens for row in self.hypotheses]


@dataclass(frozen=True)
class StepEvent:
    """What streaming hands out after each step (greedy and sampling)."""

    step: int
    tokens: np.ndarray  # (B,) the token each row produced (pad for rows already finished)
    finished: np.ndarray  # (B,) bool, rows that have produced EOS


def pad_sources(sources: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """Right-pad id lists into one (B, S) int64 array."""
    width = max(len(row) for row in sources)
    padded = np.full((len(sources), width), pad_id, dtype=np.int64)
    for row, ids in enumerate(sources):
        padded[row, : len(ids)] = ids
    return padded


def validate_request(backend: Backend, src_tokens, config: GenerationConfig) -> np.ndarray:
    """Check a request before any graph runs; returns the (B, S) int64 source array.

    Raises:
        ValueError: listing every problem (ids, shapes, lengths, limits, settings).
    """
    info, limits = backend.info, backend.limits()
    problems = config.problems()
    if isinstance(src_tokens, np.ndarray):
        src = src_tokens
    elif len(src_tokens) and all(isinstance(row, Sequence) for row in src_tokens):
        if any(len(row) == 0 for row in src_tokens):
            empty = [i for i, row in enumerate(src_tokens) if len(row) == 0]
            raise ValueError(f"source rows {empty} are empty; every row needs at least one token")
        src = pad_sources(src_tokens, info.pad_id)
    else:
        raise ValueError("src_tokens must be a (B, S) integer array or a list of id lists")

    if src.ndim != 2 or src.size == 0:
        problems.append(f"src_tokens must be a non-empty (B, S) array, got shape {src.shape}")
    elif not np.issubdtype(src.dtype, np.integer):
        problems.append(f"src_tokens must hold integer ids, got dtype {src.dtype}")
    else:
        src = src.astype(np.int64, copy=False)
        bad = np.argwhere((src < 0) | (src >= info.src_vocab_size))
        if len(bad):
            row, col = bad[0]
            problems.append(
                f"src_tokens has {len(bad)} ids outside the vocabulary [0, {info.src_vocab_size})"
                f", first {src[row, col]} at row {row}, position {col}"
            )
        lengths = (src != info.pad_id).sum(axis=1)
        if (lengths == 0).any():
            problems.append(
                f"source rows {np.flatnonzero(lengths == 0).tolist()} hold only "
                "padding; every row needs at least one real token"
            )
        if src.shape[1] > limits["src_len"]:
            problems.append(
                f"source length {src.shape[1]} exceeds the limit of "
                f"{limits['src_len']}; shorten the input or rebuild for longer ones"
            )
        if src.shape[0] * config.beam_size > limits["batch"]:
            problems.append(
                f"batch {src.shape[0]} x beams {config.beam_size} = "
                f"{src.shape[0] * config.beam_size} rows exceeds the limit of {limits['batch']}"
                "; send fewer rows at once (generate_many batches for you)"
            )
    if config.max_new_tokens > limits["capacity"]:
        problems.append(
            f"max_new_tokens ({config.max_new_tokens}) exceeds the target length "
            f"limit of {limits['capacity']}"
        )
    if config.min_new_tokens and not config.sample and info.top_k < 2:
        problems.append(
            f"min_new_tokens needs a second candidate when EOS is the best token, but the graph "
            f"returns top_k = {info.top_k}; re-export with --top-k 2 or more"
        )
    if 2 * config.beam_size > info.top_k and config.beam_size > 1:
        problems.append(
            f"beam_size {config.beam_size} needs 2 x {config.beam_size} candidates per row but "
            f"the graph returns top_k = {info.top_k}; use beam_size <= {info.top_k // 2} or "
            f"re-export with --top-k {2 * config.beam_size}"
        )
    if problems:
        raise ValueError("invalid generation request:\n" + "\n".join(f"  - {p}" for p in problems))
    return src


def _best_except(result: StepResult, token: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best candidate other than `token`: (ids (B,), log-probabilities (B,)).

    The candidates are sorted best first and hold `token` at most once, so the answer is the
    first column, or the second where the first is `token`. Scores stay the model's own
    log-probabilities (not renormalized without `token`).
    """
    column = (result.top_ids[:, 0] == token).astype(np.intp)
    rows = np.arange(column.shape[0])
    return result.top_ids[rows, column], result.top_log_probs[rows, column]


def _row_hypothesis(tokens: list[int], score: float, penalty: float) -> Hypothesis:
    return Hypothesis(tokens, score, score / max(len(tokens), 1) ** penalty)


def iter_steps(
    backend: Backend,
    src_tokens,
    config: GenerationConfig,
    *,
    timings: Timings | None = None,
) -> Iterator[StepEvent]:
    """Greedy or sampled decoding, one event per step; returns the hypotheses at the end.

    Use `generate` for the finished result, or iterate this to stream tokens as they come.
    """
    if config.beam_size > 1:
        raise ValueError(
            "streaming supports greedy and sampling only; beam search reorders "
            "hypotheses until the end (use generate)"
        )
    src = validate_request(backend, src_tokens, config)
    info, timings = backend.info, timings or Timings()
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()

    # 1) encode once; the session keeps the cross-attention keys/values and the cache
    session = backend.start(src, beams=1, capacity=config.max_new_tokens)
    timings.encode_seconds = session.encode_seconds

    # 2) every row starts from BOS
    B = src.shape[0]
    tokens = np.full(B, info.bos_id, dtype=np.int64)
    scores = np.zeros(B, dtype=np.float64)
    finished = np.zeros(B, dtype=bool)
    history = np.full((B, config.max_new_tokens), info.pad_id, dtype=np.int64)

    # 3) one step per new token until every row has ended or the budget is spent
    for step in range(config.max_new_tokens):
        step_start = time.perf_counter()
        result = session.step(tokens, step, full=config.sample)
        if config.sample:
            allowed = result.log_probs
            if step < config.min_new_tokens:
                allowed = allowed.copy()
                allowed[:, info.eos_id] = -np.inf
            chosen = sample_tokens(allowed, config, rng)
            chosen_log_probs = np.take_along_axis(result.log_probs, chosen[:, None], 1)[:, 0]
        elif step < config.min_new_tokens:
            chosen, chosen_log_probs = _best_except(result, info.eos_id)
        else:
            chosen, chosen_log_probs = result.top_ids[:, 0], result.top_log_probs[:, 0]
        # rows that already ended emit padding and add nothing to their score
        scores += np.where(finished, 0.0, chosen_log_probs)
        tokens = np.where(finished, info.pad_id, chosen)
        history[:, step] = tokens
        finished |= tokens == info.eos_id
        now = time.perf_counter()
        timings.step_seconds.append(now - step_start)
        if step == 0:
            timings.first_token_seconds = now - start
        yield StepEvent(step, tokens.copy(), finished.copy())
        if finished.all():
            break

    timings.total_seconds = time.perf_counter() - start
    hypotheses = []
    for row in range(B):
        row_tokens = history[row, : step + 1].tolist()
        if info.eos_id in row_tokens:
            row_tokens = row_tokens[: row_tokens.index(info.eos_id) + 1]
        hypotheses.append([_row_hypothesis(row_tokens, float(scores[row]), 1.0)])
    return hypotheses


def _beam_search(
    backend: Backend, src: np.ndarray, config: GenerationConfig, timings: Timings
) -> list[list[Hypothesis]]:
    info, K = backend.info, config.beam_size
    R = src.shape[0]
    start = time.perf_counter()
    session: DecodeSession = backend.start(src, beams=K, capacity=config.max_new_tokens)
    timings.encode_seconds = session.encode_seconds

    # beam k of row r is session row r * K + k; at first only beam 0 is alive
    tokens = np.full(R * K, info.bos_id, dtype=np.int64)
    beam_scores = np.full((R, K), -np.inf)
    beam_scores[:, 0] = 0.0
    histories: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(R)]
    done: list[list[Hypothesis]] = [[] for _ in range(R)]
    row_done = np.zeros(R, dtype=bool)

    def finish(r: int, hypothesis_tokens: list[int], score: float) -> None:
        done[r].append(_row_hypothesis(hypothesis_tokens, score, config.length_penalty))
        done[r].sort(key=lambda h: -h.normalized_score)
        del done[r][K:]

    for step in range(config.max_new_tokens):
        step_start = time.perf_counter()
        result = session.step(tokens, step)
        top_k = result.top_ids.shape[1]
        # (R, K * top_k) candidate scores; each beam's best top_k include the row's best 2K
        candidates = beam_scores[:, :, None] + result.top_log_probs.reshape(R, K, top_k)
        candidates = candidates.reshape(R, K * top_k)
        candidate_ids = result.top_ids.reshape(R, K * top_k)
        if step < config.min_new_tokens:
            # EOS may not end a hypothesis yet: its candidates drop below every other one
            candidates = np.where(candidate_ids == info.eos_id, -np.inf, candidates)

        parents = np.arange(R * K)  # the identity for rows that are done
        for r in np.flatnonzero(~row_done):
            order = np.argsort(-candidates[r], kind="stable")[: 2 * K]
            live: list[tuple[int, int, float]] = []  # (parent beam, token, score)
            for rank, flat in enumerate(order):
                beam, token, score = flat // top_k, int(candidate_ids[r, flat]), candidates[r, flat]
                if not np.isfinite(score):
                    break
                if token == info.eos_id:
                    if rank < K:
                        finish(r, histories[r][beam] + [token], float(score))
                elif len(live) < K:
                    live.append((beam, token, float(score)))
            histories[r] = [histories[r][beam] + [token] for beam, token, _ in live]
            beam_scores[r] = [score for _, _, score in live]
            parents[r * K : (r + 1) * K] = [r * K + beam for beam, _, _ in live]
            tokens[r * K : (r + 1) * K] = [token for _, token, _ in live]
            # on the last step, unfinished beams still compete (after the loop)
            row_done[r] = len(done[r]) >= K and step < config.max_new_tokens - 1

        session.reorder(parents)
        now = time.perf_counter()
        timings.step_seconds.append(now - step_start)
        if step == 0:
            timings.first_token_seconds = now - start
        if row_done.all():
            break

    # rows that ran out of budget: their unfinished beams compete with the finished ones
    for r in np.flatnonzero(~row_done):
        for beam in range(K):
            finish(r, histories[r][beam], float(beam_scores[r, beam]))
    timings.total_seconds = time.perf_counter() - start
    return [row[: config.n_best] for row in done]


def generate(
    backend: Backend,
    src_tokens,
    config: GenerationConfig | None = None,
    *,
    on_step: Callable[[StepEvent], None] | None = None,
) -> GenerationResult:
    """Decode every source row; src_tokens is a (B, S) int64 array or a list of id lists.

    on_step: called after each step with the tokens produced (greedy and sampling only).
    """
    config = config or GenerationConfig()
    timings = Timings()
    if config.beam_size > 1:
        if on_step is not None:
            raise ValueError("on_step streaming is not available with beam search")
        src = validate_request(backend, src_tokens, config)
        return GenerationResult(_beam_search(backend, src, config, timings), timings)

    steps = iter_steps(backend, src_tokens, config, timings=timings)
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return GenerationResult(stop.value, timings)
        if on_step is not None:
            on_step(event)


def generate_many(
    backend: Backend,
    sources: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    *,
    max_rows: int = 64,
    progress: bool = False,
) -> list[list[Hypothesis]]:
    """Decode a long list of sources in batches of similar length; results in input order."""
    config = config or GenerationConfig()
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    rows_per_batch = max(1, max_rows // config.beam_size)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[list[Hypothesis] | None] = [None] * len(sources)
    starts = range(0, len(order), rows_per_batch)
    for start in tqdm(starts, desc=backend.name, unit="batch", disable=not progress):
        chunk = order[start : start + rows_per_batch]
        result = generate(backend, [sources[i] for i in chunk], config)
        for i, hypotheses in zip(chunk, result.hypotheses, strict=True):
            results[i] = hypotheses
    return results
