"""The world's massive activations: BOS far above every ordinary token and excluded from the norm figures; among
ordinary tokens a planted heavy tail whose size follows the context (a piecewise-linear function of a projection
of the last MLP's input) along many directions, mixed, each carrying its share."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from evalkit.world.build import CALIBRATION_SEQUENCES, SIZES, build_world, hook_activations, norm_stats
from evalkit.world.massive import (
    TailSpec,
    clear_reserved,
    mlp_inputs,
    piecewise_neurons,
    tail_directions,
)
from evalkit.world.model import load_world_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.getbasetemp() / "world-cache", size="small")


def _relu_sum(p: torch.Tensor, thresholds: list[float], increments: list[float]) -> torch.Tensor:
    return sum(inc * (p - t).clamp_min(0) for t, inc in zip(thresholds, increments, strict=True))


def test_piecewise_tail_passes_through_its_anchors_and_stops_at_the_cap() -> None:
    tail = TailSpec(anchors=((0.5, 0.0), (0.9, 2.0), (0.99, 10.0)), cap=20.0)
    p = torch.linspace(0.0, 1.0, 100_001, dtype=torch.float64)  # quantile q sits at p = q
    thresholds, increments = piecewise_neurons(p, tail)
    at = _relu_sum(torch.tensor([0.3, 0.5, 0.9, 0.99]), thresholds, increments)
    torch.testing.assert_close(at, torch.tensor([0.0, 0.0, 2.0, 10.0], dtype=at.dtype), atol=1e-3, rtol=1e-3)
    # slope after 0.99 is 8/0.09: the cap (20) is reached at p = 0.99 + 10 / (8 / 0.09) = 1.1025, flat after
    far = _relu_sum(torch.tensor([1.1025, 2.0, 50.0]), thresholds, increments)
    torch.testing.assert_close(far, torch.full((3,), 20.0, dtype=far.dtype), atol=1e-3, rtol=1e-3)


def test_norm_stats_hand_case() -> None:
    """Two sequences: BOS (id 0) is left out of every figure; ordinary norms 1, 1, 1, 1, 30 (median 1)."""

    class Tok:
        bos_token = "<bos>"

        @staticmethod
        def convert_tokens_to_ids(tok: str) -> int:
            return 0

    e = torch.eye(2)
    acts_NSD = torch.stack([torch.stack([500 * e[0], e[0], e[1]]), torch.stack([500 * e[1], -e[0], 30 * e[0]])])
    tokens_NS = torch.tensor([[0, 5, 6], [0, 7, 5]])
    stats = norm_stats(acts_NSD, tokens_NS, Tok(), ("<bos>",))  # type: ignore[arg-type]
    assert stats["n_tokens"] == 4 and stats["median"] == 1.0
    assert stats["planted_over_median"] == {"<bos>": 500.0}
    assert stats["max_over_median"] == 30.0 and stats["frac_above_10x"] == 0.25
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [30.0, 0.0]], dtype=torch.float64)
    var = (x - x.mean(0)).pow(2).sum(1)
    assert stats["variance_share_above_10x"] == pytest.approx(float(var[3] / var.sum()))
    assert stats["mean_over_median"] == pytest.approx(33.0 / 4)


def test_norm_stats_pca_share_hand_case() -> None:
    """Centred tokens (±3, 0) and (0, ±1): eigenvalues 18 and 2, so the best line holds 90% of the variance."""

    class Tok:
        @staticmethod
        def convert_tokens_to_ids(tok: str) -> int:
            return 0

    acts_NSD = torch.tensor([[[9.0, 9.0], [3.0, 0.0], [-3.0, 0.0]], [[9.0, 9.0], [0.0, 1.0], [0.0, -1.0]]])
    stats = norm_stats(acts_NSD, torch.tensor([[0, 5, 5], [0, 5, 5]]), Tok(), ("<bos>",), pca_dims=(1, 2))  # type: ignore[arg-type]
    assert stats["pca_variance_share"] == {"1": pytest.approx(0.9), "2": pytest.approx(1.0)}


def test_small_world_norm_figures(world) -> None:
    norms = world.info["norms"]
    stored = load_file(str(world.corpus_path))
    n_eval = world.info["splits"]["eval"][1] - world.info["splits"]["eval"][0]
    assert norms["n_tokens"] == n_eval * (world.seq_len - 1)  # every BOS (one per sequence) left out
    assert norms["planted_over_median"]["<bos>"] >= 100  # BOS carries the largest norm
    assert norms["max_over_median"] < norms["planted_over_median"]["<bos>"]
    assert 0 < norms["variance_share_above_10x"] < 1 and stored["tokens"].shape[1] == world.seq_len
    assert norms["mean_over_median"] > 1.1  # the tail lifts the mean well above the median
    shares = list(norms["pca_variance_share"].values())
    assert 0 < shares[0] < shares[1] <= 1 + 1e-9


def _extra_along_write_directions(world, tokens_NS: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the planted component along each write direction [T, K], the median token norm without it)."""
    model = load_world_model(world.model_dir)
    plain = copy.deepcopy(model)
    clear_reserved(plain, SIZES["small"].model.tail)
    with_tail = hook_activations(model, tokens_NS, world.hook_name)[:, 1:].reshape(-1, world.d_model)
    without = hook_activations(plain, tokens_NS, world.hook_name)[:, 1:].reshape(-1, world.d_model)
    _, write_KD = tail_directions(world.d_model, SIZES["small"].model.tail)
    return (with_tail - without) @ write_KD.T, float(without.norm(dim=-1).median())


def test_every_direction_carries_its_share_and_large_tokens_mix_several(world) -> None:
    """On the calibration tokens each of the K directions fires on 1 - q0 of the tokens (its own quantile) and
    holds about 1/K of the tail's variance: no few directions take the tail (with quantiles pooled over the
    directions, 6 of 96 held 87% of it). The large tokens' extra components mix several directions."""
    tail = SIZES["small"].model.tail
    tokens = load_file(str(world.corpus_path))["tokens"][:CALIBRATION_SEQUENCES]  # the train split comes first
    along_TK, median = _extra_along_write_directions(world, tokens)
    expected = 1 - tail.anchors[0][0]
    fires_K = (along_TK > 0.01 * median).double().mean(0)
    assert bool(((fires_K > 0.8 * expected) & (fires_K < 1.2 * expected)).all()), fires_K
    share_K = along_TK.pow(2).sum(0) / along_TK.pow(2).sum()
    assert float(share_K.max()) < 2 / tail.n_directions and float(share_K.min()) > 0.5 / tail.n_directions
    large_T = along_TK.norm(dim=1) > 3 * median
    assert int(large_T.sum()) > 20
    assert float((along_TK[large_T].abs() > 0.5 * median).sum(1).double().mean()) > 1.4


def test_planted_tail_follows_the_context_along_several_directions(world) -> None:
    """The extra component (model with the tail minus the same model without it) lies in the span of the write
    directions, its size along d_k is the piecewise-linear function of ⟨ln2(x), r_k⟩ the neurons encode, and it
    takes many sizes and more than one direction."""
    model = load_world_model(world.model_dir)
    spec_tail = SIZES["small"].model.tail
    plain = copy.deepcopy(model)
    clear_reserved(plain, spec_tail)
    tokens = load_file(str(world.corpus_path))["tokens"][:16]
    with_tail = hook_activations(model, tokens, world.hook_name)[:, 1:].reshape(-1, world.d_model)
    without = hook_activations(plain, tokens, world.hook_name)[:, 1:].reshape(-1, world.d_model)
    extra_TD = with_tail - without
    read_KD, write_KD = tail_directions(world.d_model, spec_tail)
    along_TK = extra_TD @ write_KD.T
    off_span = extra_TD - along_TK @ write_KD
    assert float(off_span.norm()) < 1e-3 * float(extra_TD.norm())
    # each direction's size is a convex function of its projection: zero below its first threshold, growing above
    p_TK = mlp_inputs(plain, tokens) @ read_KD.T
    median = float(without.norm(dim=-1).median())
    active = along_TK.abs() > 0.05 * median
    assert active.any(dim=0).sum() >= 2  # several directions in use
    for k in range(spec_tail.n_directions):
        order = torch.argsort(p_TK[:, k])
        sizes = along_TK[order, k]
        assert float(sizes[: len(sizes) // 2].abs().max()) < 0.05 * median  # the lower half carries nothing
        big = sizes[sizes > 0.05 * median]
        assert len(big) == 0 or bool((big[1:] >= big[:-1] - 1e-3 * median).all())  # monotone in p_k
    assert len(torch.unique((extra_TD.norm(dim=-1) / median).round(decimals=2))) > 10  # a continuum of sizes
