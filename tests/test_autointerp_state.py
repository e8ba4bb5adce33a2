"""The autointerp example collector follows the stream-accumulator state protocol (metrics.base.StreamingMetric):
two halves merged = the whole stream, and state → save → fresh → load → continue = never stopping, down to every
sampled window (top, importance-weighted, quantile and random pools)."""

from __future__ import annotations

import io

import pytest
import torch

from autointerp.config import AutointerpConfig
from autointerp.observer import AutointerpObserver
from autointerp.sampling import ExampleCollector
from evalkit.core.records import SaeBatch

D_SAE, S, N_SEQ, PER_BATCH = 6, 40, 48, 6
CONFIGS = {
    "top_iw": AutointerpConfig(seed=3, window=4, random_pool=16, n_random_score=4, min_firings=5),
    "quantile": AutointerpConfig(
        seed=4, window=4, random_pool=16, n_random_score=4, min_firings=5, explain_sampler="quantile"
    ),
}


def stream() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """Batches (tokens, codes, special, first sequence index): sparse codes with repeated values (ties between
    sequences must not depend on arrival order) and special first tokens."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, N_SEQ, PER_BATCH):
        tokens_BS = torch.randint(0, 500, (PER_BATCH, S), generator=gen)
        fires_BSF = torch.rand(PER_BATCH, S, D_SAE, generator=gen) < 0.08
        values_BSF = torch.randint(1, 6, (PER_BATCH, S, D_SAE), generator=gen).float() / 2  # few distinct values
        special_BS = torch.zeros(PER_BATCH, S, dtype=torch.bool)
        special_BS[:, 0] = True
        batches.append((tokens_BS, values_BSF * fires_BSF, special_BS, start))
    return batches


def collected(config: AutointerpConfig, batches: list, latents: list[int] | None = None) -> ExampleCollector:
    collector = ExampleCollector(D_SAE, latents, config)
    for tokens_BS, codes_BSF, special_BS, start in batches:
        collector.update(tokens_BS, codes_BSF, special_BS, seq_offset=start)
    return collector


@pytest.mark.parametrize("sampler", list(CONFIGS))
def test_collectors_of_two_halves_merge_into_the_whole(sampler: str) -> None:
    config, batches = CONFIGS[sampler], stream()
    whole = collected(config, batches).finish()
    assert sum(ex.status == "ok" for ex in whole.values()) >= 3  # the test exercises real windows
    for cut in (1, len(batches) // 2):
        first, second = collected(config, batches[:cut]), collected(config, batches[cut:])
        second.merge(first)  # either order
        assert second.finish() == whole
    subset = collected(config, batches[:3], latents=[1, 4])
    subset.merge(collected(config, batches[3:], latents=[1, 4]))
    assert subset.finish() == {i: whole[i] for i in (1, 4)}  # a latent's sample does not depend on the others


@pytest.mark.parametrize("sampler", list(CONFIGS))
def test_collector_state_roundtrip_then_continue_equals_never_stopping(sampler: str) -> None:
    config, batches = CONFIGS[sampler], stream()
    whole = collected(config, batches).finish()
    stopped = collected(config, batches[:5])
    buffer = io.BytesIO()
    torch.save(stopped.state_dict(), buffer)
    buffer.seek(0)
    resumed = ExampleCollector(D_SAE, None, config)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for tokens_BS, codes_BSF, special_BS, start in batches[5:]:
        resumed.update(tokens_BS, codes_BSF, special_BS, seq_offset=start)
    assert resumed.finish() == whole


def test_observer_merges_per_sae_and_keeps_global_sequence_indices() -> None:
    """Two observers fed disjoint sequences (with the runner's global seq_index) merge into one fed them all."""
    config, batches = CONFIGS["top_iw"], stream()

    def observer_over(part: list) -> AutointerpObserver:
        obs = AutointerpObserver(config, {"a": D_SAE})
        for tokens_BS, codes_BSF, special_BS, start in part:
            keep_BS = ~special_BS
            seq_BS = torch.arange(start, start + tokens_BS.shape[0])[:, None].expand_as(tokens_BS)
            pos_BS = torch.arange(S)[None, :].expand_as(tokens_BS)
            f_TF = codes_BSF[keep_BS]
            batch = SaeBatch(
                sae=None,
                x_TD=torch.zeros(len(f_TF), 1),
                x_hat_TD=torch.zeros(len(f_TF), 1),
                f_TF=f_TF,
                positions_T=pos_BS[keep_BS],
                tokens_T=tokens_BS[keep_BS],
                extras={"seq_index": seq_BS[keep_BS]},
            )
            obs.observe("a", batch)
        return obs

    whole = observer_over(batches)
    merged = observer_over(batches[4:])
    merged.merge(observer_over(batches[:4]))
    assert merged.examples("a") == whole.examples("a")
    restored = AutointerpObserver(config, {"a": D_SAE})
    restored.load_state_dict(merged.state_dict())
    assert restored.examples("a") == whole.examples("a")
    seqs = {w.seq for ex in whole.examples("a").values() for w in ex.explain}
    assert seqs and max(seqs) >= 4 * PER_BATCH  # windows carry the global sequence index
