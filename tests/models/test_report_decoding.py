"""Greedy and beam search: cached == uncached tokens, beam 1 == greedy, n-gram blocking, length
penalty, exact beam search on a hand-made model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cxrfm.models.report.decoding import SpecialTokens, beam_search, block_repeated_ngrams, greedy_search
from cxrfm.models.report.r2gen import ReportGenerator, report_generator_config

SPECIAL = SpecialTokens(bos_id=1, eos_id=2, pad_id=0)


@pytest.fixture(scope="module")
def model():
    """A tiny generator fitted for 20 steps to random reports of 2..16 words.

    Random weights give degenerate searches (<eos> at once or never); a briefly trained model
    ends its reports at different, uncertain lengths, which exercises finished hypotheses,
    padding, early stopping and the length penalty.
    """
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = ReportGenerator(report_generator_config("r2gen-tiny-cpu", 40, dropout=0.0, visual_dropout=0.0))
    features = torch.randn(8, 12, 32, generator=generator)
    tokens = torch.zeros(8, 18, dtype=torch.long)
    for row in range(8):
        length = 2 + 2 * row
        tokens[row, 0] = SPECIAL.bos_id
        tokens[row, 1 : length + 1] = torch.randint(3, 40, (length,), generator=generator)
        tokens[row, length + 1] = SPECIAL.eos_id
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        loss = model.loss(tokens, features=features)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def features():
    return torch.randn(4, 12, 32, generator=torch.Generator().manual_seed(1))


SEARCHES = [
    dict(beam_size=1),
    dict(beam_size=1, no_repeat_ngram_size=3),
    dict(beam_size=3),
    dict(beam_size=3, no_repeat_ngram_size=3, length_penalty=1.0),
    dict(beam_size=4, length_penalty=0.6),
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_cached_and_uncached_decoding_give_identical_tokens(model, features, search):
    cached = model.generate(features=features, max_length=25, use_cache=True, **search)
    uncached = model.generate(features=features, max_length=25, use_cache=False, **search)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.scores, uncached.scores, rtol=1e-5, atol=1e-5)
    lengths = (cached.sequences != SPECIAL.pad_id).sum(1)
    assert len(set(lengths.tolist())) >= 2, "reports should end at different lengths"
    assert (cached.sequences[torch.arange(4), lengths - 1] == SPECIAL.eos_id).all()
    assert not (cached.sequences == SPECIAL.bos_id).any()


def test_cached_and_uncached_logits_agree_step_by_step(model, features):
    encoder_states, mask = model.encode(features=features)
    cached = model.start_decoding(encoder_states, mask, use_cache=True, capacity=10)
    uncached = model.start_decoding(encoder_states, mask, use_cache=False, capacity=10)
    tokens = torch.full((4, 1), SPECIAL.bos_id)
    for _ in range(8):
        a, cached = model.decode_step(tokens, cached)
        b, uncached = model.decode_step(tokens, uncached)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        tokens = torch.cat([tokens, a.argmax(-1, keepdim=True)], dim=1)
    with pytest.raises(ValueError, match="prefix"):
        model.decode_step(tokens[:, :3], cached)


def test_beam_width_one_equals_greedy(model, features):
    for ngram in (0, 3):
        encoder_states, mask = model.encode(features=features)
        common = dict(max_length=25, special=SPECIAL, no_repeat_ngram_size=ngram)
        greedy = greedy_search(model.decode_step, model.start_decoding(encoder_states, mask, True, 25), 4, **common)
        state = model.start_decoding(encoder_states, mask, True, 25)
        beam = beam_search(model.decode_step, state, 4, beam_size=1, **common)
        assert torch.equal(greedy.sequences, beam.sequences)
        torch.testing.assert_close(greedy.scores, beam.scores)


def test_beam_search_scores_at_least_greedy(model, features):
    greedy = model.generate(features=features, beam_size=1, max_length=25)
    beam = model.generate(features=features, beam_size=4, max_length=25)
    assert (beam.scores >= greedy.scores - 1e-5).all()


def test_generation_respects_max_length_and_restores_training_mode(model, features):
    model.train()
    out = model.generate(features=features, beam_size=3, max_length=4)
    assert model.training and out.sequences.shape[1] <= 4
    model.eval()


def test_trigram_blocking_bans_exactly_the_repeating_tokens():
    tokens = torch.tensor([[1, 5, 6, 7, 5, 6], [1, 5, 6, 7, 8, 9]])
    log_probs = torch.zeros(2, 10)
    blocked = block_repeated_ngrams(log_probs, tokens, 3)
    # Row 0 ends with "5 6", and "5 6 7" occurred: 7 is banned, nothing else.
    assert torch.isinf(blocked[0, 7]) and torch.isfinite(blocked[0, torch.arange(10) != 7]).all()
    assert torch.isfinite(blocked[1]).all()
    assert torch.equal(block_repeated_ngrams(log_probs, tokens, 0), log_probs)
    assert torch.equal(block_repeated_ngrams(log_probs, tokens[:, :2], 3), log_probs)


def test_generated_reports_never_repeat_a_trigram(model, features):
    for beam in (1, 3):
        out = model.generate(features=features, beam_size=beam, max_length=30, no_repeat_ngram_size=3)
        for row in out.sequences.tolist():
            row = [1] + [t for t in row if t != SPECIAL.pad_id]
            trigrams = [tuple(row[i : i + 3]) for i in range(len(row) - 2)]
            assert len(trigrams) == len(set(trigrams))


@dataclass
class TableState:
    """A toy model: next-token log-probs depend only on the last token (a Markov table)."""

    def reorder(self, index):
        return self


def table_step(table):
    def step(tokens, state):
        return table[tokens[:, -1]].log(), state

    return step


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # Tokens: 0 pad, 1 bos, 2 eos, 3 "a", 4 "b". From <bos>: a 0.6, b 0.4. After a: eos 0.5, b 0.5 ...
    table = torch.full((5, 5), 1e-9)
    table[1, 3], table[1, 4] = 0.6, 0.4
    table[3, 2], table[3, 4] = 0.5, 0.5  # "a" then an uncertain future
    table[4, 2] = 1.0  # "b <eos>" is certain
    greedy = greedy_search(table_step(table), TableState(), 1, max_length=5, special=SPECIAL)
    beam = beam_search(table_step(table), TableState(), 1, beam_size=2, max_length=5, special=SPECIAL)
    assert greedy.sequences.tolist() == [[3, 2]]  # a <eos>: 0.6 × 0.5 = 0.30
    assert beam.sequences.tolist() == [[4, 2]]  # b <eos>: 0.4 × 1.0 = 0.40
    assert beam.scores.item() == pytest.approx(torch.tensor(0.4).log().item(), abs=1e-5)


def test_length_penalty_prefers_longer_hypotheses():
    # From <bos>: eos 0.5 now, or "a" 0.5 then eos for sure: equal products (0.5), different lengths.
    table = torch.full((5, 5), 1e-9)
    table[1, 2], table[1, 3] = 0.55, 0.45
    table[3, 2] = 1.0
    step = table_step(table)
    plain = beam_search(step, TableState(), 1, beam_size=2, max_length=5, special=SPECIAL)
    long = beam_search(step, TableState(), 1, beam_size=2, max_length=5, special=SPECIAL, length_penalty=1.0)
    assert plain.sequences.tolist() == [[2]]  # log 0.55 > log 0.45
    assert long.sequences.tolist() == [[3, 2]]  # log(0.45) / 2 > log(0.55) / 1
    assert long.scores.item() == pytest.approx(torch.tensor(0.45).log().item() / 2, abs=1e-5)
