"""Sampling on hand-built token/code tensors whose right answers are known by construction."""

from __future__ import annotations

import torch

from autointerp.config import AutointerpConfig
from autointerp.observer import SEQ_INDEX_KEY, AutointerpObserver
from autointerp.sampling import ExampleCollector, LatentExamples
from evalkit.core.records import SaeBatch

S = 64
PEAK_POS = (5, 30, 55)  # pairwise > 2·window apart, so every planted peak can own a window


def _tokens(n_seq: int, offset: int = 0) -> torch.Tensor:
    """Sequence b holds token ids 1000·b + position: any window token reveals its sequence and position."""
    return (torch.arange(n_seq)[:, None] + offset) * 1000 + torch.arange(S)[None, :]


def _planted_collector(config: AutointerpConfig) -> tuple[ExampleCollector, dict[tuple[int, int], float]]:
    """Latent 0: 18 planted peaks with distinct values in 6 sequences (two batches), tiny noise, 4 quiet
    sequences."""
    collector = ExampleCollector(d_sae=2, config=config)
    planted: dict[tuple[int, int], float] = {}
    gen = torch.Generator().manual_seed(1)
    for offset in (0, 3):
        codes_BSF = torch.zeros(3, S, 2)
        codes_BSF[:, :, 0] = 0.004 * torch.rand(3, S, generator=gen)  # below 1% of the max: never active
        for b in range(3):
            for k, pos in enumerate(PEAK_POS):
                value = 1.0 + 0.1 * ((offset + b) * 3 + k)
                codes_BSF[b, pos, 0] = value
                planted[(offset + b, pos)] = value
        special_BS = torch.zeros(3, S, dtype=torch.bool)
        special_BS[:, 0] = True
        collector.update(_tokens(3, offset), codes_BSF, special_BS)
    quiet_BSF = torch.zeros(4, S, 2)
    quiet_BSF[:, :, 0] = 0.004 * torch.rand(4, S, generator=gen)
    collector.update(_tokens(4, 6), quiet_BSF, torch.zeros(4, S, dtype=torch.bool))  # room for random windows
    return collector, planted


def _all_windows(ex: LatentExamples) -> list:
    return [*ex.explain, *ex.held_out, *ex.random]


def test_top_windows_are_the_planted_highest_activations() -> None:
    collector, planted = _planted_collector(AutointerpConfig(n_iw_explain=0, n_iw_score=0))
    ex = collector.finish()[0]
    assert ex.status == "ok"
    assert ex.firings == 18
    assert abs(ex.max_act - max(planted.values())) < 1e-6
    expected = sorted(planted, key=lambda k: -planted[k])[:12]
    tops = [w for w in [*ex.explain, *ex.held_out] if w.kind == "top"]
    assert sorted((w.seq, w.center) for w in tops) == sorted(expected)
    assert len(ex.explain) == 10 and len(ex.held_out) == 2
    for w in tops:  # the centre token carries the planted value
        assert abs(w.max_act - planted[(w.seq, w.center)]) < 1e-6


def test_windows_stay_inside_their_sequence_and_skip_special_tokens() -> None:
    collector, _ = _planted_collector(AutointerpConfig())
    ex = collector.finish()[0]
    for w in _all_windows(ex):
        positions = [t % 1000 for t in w.tokens]
        assert all(t // 1000 == w.seq for t in w.tokens), "a window crossed into another sequence"
        first = 1 if w.seq < 6 else 0  # the planted sequences have a special BOS at position 0
        assert first == 0 or 0 not in positions, "the special BOS position leaked into a window"
        lo, hi = max(first, w.center - 10), min(S - 1, w.center + 10)
        assert positions == list(range(lo, hi + 1))
    near_start = [w for w in _all_windows(ex) if w.center == 5]
    assert near_start and all(len(w.tokens) == 15 for w in near_start)  # positions 1..15


def test_special_tokens_never_count_as_activations() -> None:
    collector = ExampleCollector(d_sae=1, config=AutointerpConfig(min_firings=1, n_top_explain=1, n_top_score=1))
    codes_BSF = torch.zeros(2, S, 1)
    codes_BSF[:, 0, 0] = 100.0  # huge on BOS: must be ignored
    codes_BSF[0, 40, 0] = 2.0
    codes_BSF[1, 20, 0] = 1.0
    special_BS = torch.zeros(2, S, dtype=torch.bool)
    special_BS[:, 0] = True
    collector.update(_tokens(2), codes_BSF, special_BS)
    ex = collector.finish()[0]
    assert ex.max_act == 2.0 and ex.firings == 2
    assert sorted((w.seq, w.center) for w in [*ex.explain, *ex.held_out]) == [(0, 40), (1, 20)]


def test_held_out_and_random_windows_never_overlap_explainer_windows() -> None:
    for sampler in ("top_iw", "quantile"):
        collector, _ = _planted_collector(AutointerpConfig(explain_sampler=sampler, n_iw_explain=2, n_iw_score=1))
        ex = collector.finish()[0]
        assert ex.status == "ok" and ex.held_out and ex.random
        for shown in ex.explain:
            for hidden in [*ex.held_out, *ex.random]:
                assert not shown.overlaps(hidden, 10), (sampler, shown, hidden)


def test_importance_weighted_windows_sit_below_the_top_and_above_threshold() -> None:
    config = AutointerpConfig(n_top_explain=4, n_top_score=1, n_iw_explain=3, n_iw_score=1)
    collector, planted = _planted_collector(config)
    ex = collector.finish()[0]
    iw = [w for w in [*ex.explain, *ex.held_out] if w.kind == "iw"]
    top = [w for w in [*ex.explain, *ex.held_out] if w.kind == "top"]
    assert len(iw) == 4 and len(top) == 5
    assert max(w.max_act for w in iw) < min(w.max_act for w in top)
    assert all((w.seq, w.center) in planted for w in iw)  # the sub-threshold noise is never sampled


def test_random_windows_are_labelled_by_their_own_activations() -> None:
    collector, planted = _planted_collector(AutointerpConfig(random_pool=6, n_random_score=6))
    ex = collector.finish()[0]
    for w in ex.random:
        has_peak = any((w.seq, p) in planted and abs(p - w.center) <= 10 for p in PEAK_POS)
        assert any(w.active(ex.threshold)) == has_peak


def test_latent_with_too_few_firings_is_insufficient_not_zero() -> None:
    collector, _ = _planted_collector(AutointerpConfig(min_firings=19))
    ex = collector.finish()
    assert ex[0].status == "insufficient_examples" and "18 firings" in ex[0].reason
    assert ex[1].status == "dead"


def test_observer_rebuilds_sequences_from_the_runners_flat_kept_tokens() -> None:
    """The runner passes kept tokens flattened; the observer must see exactly what a direct update sees."""
    config = AutointerpConfig()
    gen = torch.Generator().manual_seed(5)
    tokens_BS = _tokens(6)
    codes_BSF = torch.zeros(6, S, 2)
    codes_BSF[..., 0] = torch.rand(6, S, generator=gen) * (torch.rand(6, S, generator=gen) < 0.2)
    special_BS = torch.zeros(6, S, dtype=torch.bool)
    special_BS[:, 0] = True
    direct = ExampleCollector(2, config=config)
    direct.update(tokens_BS, codes_BSF, special_BS)
    keep_BS = ~special_BS
    batch = SaeBatch(
        sae=None,
        x_TD=torch.zeros(int(keep_BS.sum()), 4),
        x_hat_TD=torch.zeros(int(keep_BS.sum()), 4),
        f_TF=codes_BSF[keep_BS],
        positions_T=torch.arange(S).expand(6, S)[keep_BS],
        tokens_T=tokens_BS[keep_BS],
    )
    observer = AutointerpObserver(config, {"sae-a": 2})
    assert observer.wants("sae-a") and not observer.wants("sae-b")
    observer.observe("sae-a", batch)
    assert observer.examples("sae-a") == direct.finish()
    with_index = AutointerpObserver(config, {"sae-a": 2})
    batch.extras[SEQ_INDEX_KEY] = torch.arange(6)[:, None].expand(6, S)[keep_BS]
    with_index.observe("sae-a", batch)
    assert with_index.examples("sae-a") == direct.finish()


def test_importance_weighted_sampling_is_proportional_to_squared_activation() -> None:
    """100 sub-top windows, half at activation 1 and half at 3: ∝ act² picks the 3s with p = 9/10 per draw
    (∝ act would give 3/4, uniform 1/2). Averaged over seeds the share of 3s must sit near 0.9."""
    shares = []
    for seed in range(12):
        config = AutointerpConfig(seed=seed, n_iw_explain=5, n_iw_score=2, random_pool=4, n_random_score=1)
        collector = ExampleCollector(1, config=config)
        codes_BSF = torch.zeros(112, S, 1)
        codes_BSF[:12, 30, 0] = 10.0  # the top windows
        codes_BSF[12:62, 30, 0] = 1.0
        codes_BSF[62:, 30, 0] = 3.0
        collector.update(_tokens(112), codes_BSF, torch.zeros(112, S, dtype=torch.bool))
        ex = collector.finish()[0]
        iw = [w for w in [*ex.explain, *ex.held_out] if w.kind == "iw"]
        assert len(iw) == 7
        shares.append(sum(w.max_act == 3.0 for w in iw) / 7)
    assert 0.82 < sum(shares) / len(shares) <= 1.0, shares
