"""Batched greedy and beam search over any autoregressive step function.

The search never looks inside the model. It calls ``step(tokens, state) -> (logits, state)`` with
the whole prefix ``tokens (N, t)`` (``<bos>`` first) and gets the next-token logits ``(N, V)``; how
the model uses the prefix is its business -- a cached state reads only ``tokens[:, -1]``, an
uncached one recomputes everything. Beams are re-ordered through ``state.reorder(index)``, which
must return the state of rows ``index`` (also used to copy each example's state ``K`` times).

Rules shared by both searches (so beam width 1 gives exactly the greedy tokens):

* ``<pad>`` and ``<bos>`` are never generated.
* ``no_repeat_ngram_size = n > 0`` blocks any token that would repeat an n-gram already in the
  hypothesis (``3`` = trigram blocking), counting from ``<bos>``.
* At most ``max_length`` tokens are generated per example, ``<eos>`` included; after ``<eos>`` the
  rows are padded with ``<pad>``.

Beam search keeps ``K`` running hypotheses per example. A hypothesis that ends with ``<eos>`` among
the best ``K`` candidates of a step is finished with score ``sum log p / length ** length_penalty``
(``length`` = generated tokens incl. ``<eos>``; ``length_penalty = 0`` ranks by the plain sum,
``> 0`` favours longer reports). An example stops once it has ``K`` finished hypotheses and the
best running one, normalised at the current length, cannot beat the worst of them (the usual
heuristic). Running hypotheses still alive at ``max_length`` compete as finished ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class DecoderState(Protocol):
    def reorder(self, index: torch.Tensor) -> "DecoderState":
        """The state of rows ``index`` (``(N',)`` int64), in that order."""
        ...


StepFunction = Callable[[torch.Tensor, DecoderState], tuple[torch.Tensor, DecoderState]]


@dataclass
class SpecialTokens:
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0


@dataclass
class GenerationOutput:
    """``sequences (B, L)``: generated ids after ``<bos>``, ``<eos>`` included, ``<pad>`` after it.

    ``scores (B,)``: greedy -- sum of log-probabilities; beam -- the length-normalised beam score.
    """

    sequences: torch.Tensor
    scores: torch.Tensor


def block_repeated_ngrams(log_probs: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Set to ``-inf`` every next token that would repeat an ``n``-gram of ``tokens (N, t)``.

    ``log_probs (N, V)`` -> a new ``(N, V)`` tensor (vectorised: all rows and n-grams at once).
    """
    if n <= 0 or tokens.shape[1] < n:
        return log_probs
    grams = tokens.unfold(1, n, 1)  # (N, t - n + 1, n): every n-gram of the prefix
    last = tokens[:, tokens.shape[1] - (n - 1) :].unsqueeze(1)  # (N, 1, n - 1)
    repeats = (grams[:, :, : n - 1] == last).all(dim=-1)  # (N, G): n-grams sharing our last n-1 tokens
    penalty = torch.where(repeats, float("-inf"), 0.0).to(log_probs.dtype)
    # Adding zeros leaves other scores bit-identical; -inf lands on each banned token.
    return log_probs + torch.zeros_like(log_probs).scatter_add_(1, grams[:, :, -1], penalty)


def _next_token_log_probs(
    logits: torch.Tensor, tokens: torch.Tensor, special: SpecialTokens, no_repeat_ngram_size: int
) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    log_probs[:, [special.pad_id, special.bos_id]] = float("-inf")
    return block_repeated_ngrams(log_probs, tokens, no_repeat_ngram_size)


@torch.no_grad()
def greedy_search(
    step: StepFunction,
    state: DecoderState,
    batch_size: int,
    *,
    max_length: int,
    special: SpecialTokens = SpecialTokens(),
    no_repeat_ngram_size: int = 0,
    device: torch.device | str = "cpu",
) -> GenerationOutput:
    """Take the most probable token at every step, for ``batch_size`` examples at once."""
    tokens = torch.full((batch_size, 1), special.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    scores = torch.zeros(batch_size, device=device)
    for _ in range(max_length):
        logits, state = step(tokens, state)
        log_probs = _next_token_log_probs(logits, tokens, special, no_repeat_ngram_size)
        best = log_probs.argmax(dim=-1)
        scores += torch.where(finished, 0.0, log_probs.gather(1, best[:, None]).squeeze(1))
        best = torch.where(finished, special.pad_id, best)
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        finished |= best == special.eos_id
        if bool(finished.all()):
            break
    return GenerationOutput(tokens[:, 1:], scores)


@dataclass
class _Hypothesis:
    score: float  # length-normalised
    tokens: list[int]


class _FinishedHypotheses:
    """The best ``beam_size`` finished hypotheses of one example."""

    def __init__(self, beam_size: int, length_penalty: float):
        self.beam_size = beam_size
        self.length_penalty = length_penalty
        self.hypotheses: list[_Hypothesis] = []

    def normalise(self, sum_log_probs: float, length: int) -> float:
        return sum_log_probs / (length**self.length_penalty)

    def add(self, tokens: list[int], sum_log_probs: float) -> None:
        self.hypotheses.append(_Hypothesis(self.normalise(sum_log_probs, len(tokens)), tokens))
        # Stable sort: among equal scores the earlier (higher-ranked) candidate wins.
        self.hypotheses.sort(key=lambda h: -h.score)
        del self.hypotheses[self.beam_size :]

    def is_done(self, best_running_sum: float, length: int) -> bool:
        if len(self.hypotheses) < self.beam_size:
            return False
        return self.hypotheses[-1].score >= self.normalise(best_running_sum, length)

    def best(self) -> _Hypothesis:
        return self.hypotheses[0]


@torch.no_grad()
def beam_search(
    step: StepFunction,
    state: DecoderState,
    batch_size: int,
    *,
    beam_size: int,
    max_length: int,
    special: SpecialTokens = SpecialTokens(),
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    device: torch.device | str = "cpu",
) -> GenerationOutput:
    """Beam search with ``beam_size`` beams per example; all ``batch_size * beam_size`` rows run together.

    ``state`` holds one row per example; it is expanded to ``K`` rows per example here.
    """
    k = beam_size
    rows = batch_size * k
    example_of_row = torch.arange(batch_size, device=device).repeat_interleave(k)
    state = state.reorder(example_of_row)
    tokens = torch.full((rows, 1), special.bos_id, dtype=torch.long, device=device)
    # All beams start identical: only beam 0 may expand at the first step, or the K beams would be copies.
    beam_scores = torch.zeros(batch_size, k, device=device)
    beam_scores[:, 1:] = float("-inf")
    finished = [_FinishedHypotheses(k, length_penalty) for _ in range(batch_size)]
    done = [False] * batch_size
    for position in range(max_length):
        logits, state = step(tokens, state)
        log_probs = _next_token_log_probs(logits, tokens, special, no_repeat_ngram_size)
        vocab = log_probs.shape[-1]
        candidates = (beam_scores.view(rows, 1) + log_probs).view(batch_size, k * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # 2K: enough to refill K beams after K <eos>
        next_scores, next_tokens, next_beams = _select_beams(
            top_scores.tolist(), top_ids.tolist(), vocab, tokens, finished, done, special, position + 1, k
        )
        source_rows = (torch.arange(batch_size, device=device) * k)[:, None] + torch.tensor(next_beams, device=device)
        source_rows = source_rows.view(rows)
        tokens = torch.cat([tokens[source_rows], torch.tensor(next_tokens, device=device).view(rows, 1)], dim=1)
        beam_scores = torch.tensor(next_scores, device=device, dtype=beam_scores.dtype)
        if all(done):
            break
        state = state.reorder(source_rows)
    return _finalise(tokens, beam_scores, finished, done, special, k, device)


def _select_beams(top_scores, top_ids, vocab, tokens, finished, done, special, length, k):
    """Pick each example's next ``K`` beams from its ``2K`` best candidates; bank finished ones."""
    next_scores, next_tokens, next_beams = [], [], []
    for example, (scores, ids) in enumerate(zip(top_scores, top_ids)):
        if done[example]:
            next_scores.append([float("-inf")] * k)
            next_tokens.append([special.pad_id] * k)
            next_beams.append(list(range(k)))
            continue
        chosen_scores, chosen_tokens, chosen_beams = [], [], []
        for rank, (score, flat_id) in enumerate(zip(scores, ids)):
            beam, token = divmod(flat_id, vocab)
            if score == float("-inf"):
                break
            if token == special.eos_id:
                if rank < k:  # an <eos> outside the best K is not a better hypothesis than those kept
                    prefix = tokens[example * k + beam, 1:].tolist()
                    finished[example].add(prefix + [token], score)
                continue
            chosen_scores.append(score)
            chosen_tokens.append(token)
            chosen_beams.append(beam)
            if len(chosen_scores) == k:
                break
        while len(chosen_scores) < k:  # fewer than K live candidates (tiny vocabularies, heavy blocking)
            chosen_scores.append(float("-inf"))
            chosen_tokens.append(special.pad_id)
            chosen_beams.append(0)
        best_running = chosen_scores[0]
        done[example] = best_running == float("-inf") or finished[example].is_done(best_running, length)
        next_scores.append(chosen_scores)
        next_tokens.append(chosen_tokens)
        next_beams.append(chosen_beams)
    return next_scores, next_tokens, next_beams


def _finalise(tokens, beam_scores, finished, done, special, k, device) -> GenerationOutput:
    """Best hypothesis per example; beams alive at ``max_length`` compete without ``<eos>``."""
    scores_list = beam_scores.tolist()
    best: list[_Hypothesis] = []
    for example, hypotheses in enumerate(finished):
        if not done[example]:
            for beam in range(k):
                if scores_list[example][beam] > float("-inf"):
                    hypotheses.add(tokens[example * k + beam, 1:].tolist(), scores_list[example][beam])
        if not hypotheses.hypotheses:  # nothing could be generated (every candidate was blocked)
            hypotheses.hypotheses.append(_Hypothesis(float("-inf"), []))
        best.append(hypotheses.best())
    return GenerationOutput(
        sequences=_pad_sequences([h.tokens for h in best], special.pad_id, device),
        scores=torch.tensor([h.score for h in best], device=device),
    )


def _pad_sequences(sequences: Sequence[list[int]], pad_id: int, device) -> torch.Tensor:
    longest = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long, device=device)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return out
