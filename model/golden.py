"""Golden decoders: greedy and beam search, as plain as they can be written.

They recompute the whole decoder over the target prefix at every step (no cache) and handle
one source row at a time in beam search, so they share nothing with the fast runtime's loop
except the model itself. The runtime is checked against them token for token.

Conventions shared with the runtime: decoding starts from `bos_id`; a row ends when it emits
`eos_id` (the EOS is part of its tokens and of its score) or after `max_new_tokens`. A score is
the sum of the log-probabilities of the generated tokens; beam search ranks finished
hypotheses by score / length ** length_penalty (length counts generated tokens, EOS included)
and stops a row as soon as `beam_size` hypotheses have finished (early stopping); on the
step that spends the budget, the unfinished prefixes compete with the finished hypotheses
(as in Hugging Face transformers' generate() with early_stopping=True).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transduce.model.transformer import Transformer


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated ids, without BOS; ends with EOS unless the budget ran out
    score: float  # sum of the tokens' log-probabilities
    normalized_score: float  # score / len(tokens) ** length_penalty (beam search ranking)


def _next_log_probs(model: Transformer, prefixes: torch.Tensor, cross_kv, src_mask) -> torch.Tensor:
    """(N, V) log-probabilities of the token after each (N, t) prefix, recomputed from scratch."""
    return torch.log_softmax(model.decode(prefixes, cross_kv, src_mask)[:, -1].float(), dim=-1)


@torch.no_grad()
def greedy(model: Transformer, src_tokens: torch.Tensor, max_new_tokens: int) -> list[Hypothesis]:
    """The most probable next token at every step, for each row of src_tokens (B, S)."""
    model.eval()
    config = model.config
    src_mask = model.source_mask(src_tokens)
    cross_kv = model.cross_keys_values(model.encode(src_tokens))

    B = src_tokens.shape[0]
    prefixes = torch.full((B, 1), config.bos_id, dtype=torch.long)
    scores = torch.zeros(B, dtype=torch.float64)
    finished = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new_tokens):
        log_probs = _next_log_probs(model, prefixes, cross_kv, src_mask)  # (B, V)
        best = log_probs.argmax(dim=-1)
        # rows that already ended keep emitting padding and add nothing to their score
        scores += torch.where(finished, 0.0, log_probs.gather(1, best[:, None])[:, 0].double())
        best = torch.where(finished, config.pad_id, best)
        prefixes = torch.cat([prefixes, best[:, None]], dim=1)
        finished |= best == config.eos_id
        if finished.all():
            break

    results = []
    for row in range(B):
        tokens = prefixes[row, 1:].tolist()
        if config.eos_id in tokens:
            tokens = tokens[: tokens.index(config.eos_id) + 1]
        score = float(scores[row])
        results.append(Hypothesis(tokens, score, score / max(len(tokens), 1)))
    return results


def _normalize(score: float, length: int, length_penalty: float) -> float:
    return score / (length**length_penalty)


@torch.no_grad()
def beam_search(
    model: Transformer,
    src_tokens: torch.Tensor,
    *,
    beam_size: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """The n_best hypotheses of each row of src_tokens (B, S), best first."""
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best ({n_best}) must be between 1 and beam_size ({beam_size})")
    model.eval()
    return [
        _beam_search_row(
            model, src_tokens[row : row + 1], beam_size, max_new_tokens, length_penalty
        )[:n_best]
        for row in range(src_tokens.shape[0])
    ]


def _beam_search_row(
    model: Transformer,
    src_tokens: torch.Tensor,
    beam_size: int,
    max_new_tokens: int,
    length_penalty: float,
) -> list[Hypothesis]:
    """Beam search for one source row (1, S); returns up to beam_size hypotheses, best first."""
    config = model.config
    src_mask = model.source_mask(src_tokens)
    cross_kv = model.cross_keys_values(model.encode(src_tokens))

    live: list[tuple[list[int], float]] = [([config.bos_id], 0.0)]  # (prefix with BOS, score)
    done: list[Hypothesis] = []

    def finish(tokens: list[int], score: float) -> None:
        done.append(Hypothesis(tokens, score, _normalize(score, len(tokens), length_penalty)))
        done.sort(key=lambda h: -h.normalized_score)
        del done[beam_size:]

    for step in range(max_new_tokens):
        # 1) extend every live prefix by every token: (K, V) candidate scores
        prefixes = torch.tensor([tokens for tokens, _ in live])
        K = len(live)
        row_kv = [(k.expand(K, -1, -1, -1), v.expand(K, -1, -1, -1)) for k, v in cross_kv]
        log_probs = _next_log_probs(model, prefixes, row_kv, src_mask.expand(K, -1)).double()
        candidates = torch.tensor([score for _, score in live], dtype=torch.float64)[:, None]
        candidates = (candidates + log_probs).flatten()

        # 2) the 2 * beam_size best candidates: an EOS among the first beam_size finishes a
        #    hypothesis, the best beam_size others continue
        top_scores, top_ids = candidates.topk(min(2 * beam_size, candidates.numel()))
        next_live = []
        for rank, (score, flat) in enumerate(
            zip(top_scores.tolist(), top_ids.tolist(), strict=True)
        ):
            beam, token = divmod(flat, log_probs.shape[1])
            tokens = live[beam][0][1:] + [token]
            if token == config.eos_id:
                if rank < beam_size:
                    finish(tokens, score)
            elif len(next_live) < beam_size:
                next_live.append(([config.bos_id] + tokens, score))
        live = next_live

        # 3) early stopping: the row is done once beam_size hypotheses have finished, except
        #    on the last step, whose unfinished prefixes still compete below
        if len(done) >= beam_size and step < max_new_tokens - 1:
            return done

    # the budget ran out: unfinished prefixes compete with the finished ones
    for tokens, score in live:
        finish(tokens[1:], score)
    return done
