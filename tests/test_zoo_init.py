"""The zoo's initialisation: no duplicate latents at the start, the outlier-aware option's directions on planted data,
and the batch-top-k failure it fixes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from sae_lens import SAE

from evalkit.world.planted import planted_activations
from evalkit.world.zoo import activation_scale, train_one
from evalkit.world.zoo_init import init_from_data, outlier_directions
from evalkit.world.zoo_recipe import ZooEntry, ZooSize


def massive_tokens(
    n_tokens: int = 16384, d_in: int = 32, share: float = 0.08, multiple: float = 35.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Planted sparse activations where `share` of the tokens are one fixed vector at `multiple` x the median
    norm (plus 5% of their own content), as the sentence delimiters are in the embedded world.

    Returns (activations [N, D], massive mask [N], the unit massive direction [D])."""
    acts_ND = planted_activations(n_tokens, d_in=d_in, n_features=128, heavy_frac=0.0, seed=0).acts_ND.clone()
    massive_N = torch.rand(n_tokens, generator=torch.Generator().manual_seed(1)) < share
    u_D = torch.zeros(d_in)
    u_D[:3] = torch.tensor([1.0, -1.0, 0.5])
    u_D = u_D / u_D.norm()
    median = acts_ND.norm(dim=1).median()
    acts_ND[massive_N] = multiple * median * u_D + 0.05 * acts_ND[massive_N]
    return acts_ND, massive_N, u_D


def test_no_outliers_no_directions() -> None:
    acts_ND = planted_activations(2048, d_in=32, heavy_frac=0.0).acts_ND
    assert outlier_directions(acts_ND - acts_ND.median(0).values).shape == (0, 32)


def test_one_massive_vector_gives_its_direction_oriented_towards_it() -> None:
    acts_ND, massive_N, u_D = massive_tokens()
    directions_MD = outlier_directions(acts_ND - acts_ND.median(0).values)
    assert directions_MD.shape == (1, 32)
    assert float(directions_MD[0] @ u_D) > 0.999  # the massive direction, with the sign that fires on it


def test_two_massive_classes_give_two_directions() -> None:
    acts_ND, massive_N, u_D = massive_tokens()
    v_D = torch.zeros(32)
    v_D[10] = 1.0
    second_N = massive_N & (torch.arange(len(acts_ND)) % 2 == 0)
    acts_ND[second_N] = acts_ND[second_N].norm(dim=1, keepdim=True) * v_D
    directions_MD = outlier_directions(acts_ND - acts_ND.median(0).values)
    assert directions_MD.shape == (2, 32)
    basis_2D = torch.stack([u_D, v_D])
    # Both planted directions lie in the found span, whatever its rotation.
    assert torch.allclose((basis_2D @ directions_MD.T).norm(dim=1), torch.ones(2), atol=1e-3)


def test_outliers_start_at_ten_times_the_median_norm() -> None:
    for multiple, expected in ((8.0, 0), (12.0, 1)):
        acts_ND, _, _ = massive_tokens(multiple=multiple)
        assert outlier_directions(acts_ND - acts_ND.median(0).values).shape[0] == expected, multiple


def _fresh_sae(d_in: int, d_sae: int) -> torch.nn.Module:
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=4, device="cpu"))


def _unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    return W_FD / W_FD.norm(dim=1, keepdim=True)


@torch.no_grad()
def test_outlier_aware_init_sets_one_latent_and_orthogonalises_the_rest() -> None:
    acts_ND, _, u_D = massive_tokens()
    sae = _fresh_sae(32, 128)
    init_from_data(sae, acts_ND, outlier_aware=True)
    found_D = outlier_directions(acts_ND - sae.b_dec)[0]
    assert torch.allclose(sae.W_dec[0], found_D) and float(found_D @ u_D) > 0.999
    assert abs(float(sae.W_dec[0].norm()) - 1.0) < 1e-5  # alone it reconstructs a massive token
    assert torch.allclose(sae.W_enc[:, 0], sae.W_dec[0])
    assert float((found_D @ _unit_rows(sae.W_enc[:, 1:].T).T).abs().max()) < 1e-5
    assert float((_unit_rows(sae.W_dec[1:]) @ found_D).abs().max()) < 1e-5
    assert float((_unit_rows(sae.W_dec[1:]) @ u_D).abs().max()) < 0.01  # found_D is u up to the 5% content


def _latents_in_duplicate_pairs(W_dec_FD: torch.Tensor) -> int:
    gram_FF = (_unit_rows(W_dec_FD) @ _unit_rows(W_dec_FD).T).abs().fill_diagonal_(0)
    return int((gram_FF > 0.99).any(dim=1).sum())


@torch.no_grad()
def test_init_starts_without_duplicate_latents_on_repeated_tokens() -> None:
    """A word-level world repeats tokens: here 2,048 activations are copies of 20 vectors. Decoder rows copied from
    tokens (the previous init) would put most latents in duplicate pairs; sae-lens' random directions put none, and
    b_dec starts at the coordinate-wise median."""
    gen = torch.Generator().manual_seed(0)
    acts_ND = torch.randn(20, 32, generator=gen)[torch.randint(20, (2048,), generator=gen)]
    copied_FD = acts_ND[torch.randint(2048, (256,), generator=gen)] - acts_ND.median(0).values
    assert _latents_in_duplicate_pairs(copied_FD) > 200  # the failure the random init avoids
    for outlier_aware in (False, True):
        sae = _fresh_sae(32, 256)
        init_from_data(sae, acts_ND, outlier_aware=outlier_aware)
        assert _latents_in_duplicate_pairs(sae.W_dec) == 0
        assert torch.equal(sae.b_dec, acts_ND.median(0).values)
        assert torch.allclose(sae.W_enc, sae.W_dec.T)


def _planted_batch_topk_firing(outlier_init: bool, out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a k=4 batch-top-k zoo entry on `massive_tokens()` into `out`; (firing [N, F] of the saved SAE, massive
    mask [N])."""
    acts_ND, massive_N, _ = massive_tokens()
    world = SimpleNamespace(model_dir=Path("planted"), hook_name="planted", fingerprint="planted")
    zoo = ZooSize(d_sae_multiple=4, steps=150, batch_size=256)
    params = {"k": 4, "rescale_acts_by_decoder_norm": False, "decoder_init_norm": 0.3}
    entry = ZooEntry("batchtopk", "unit_enc_batchtopk", params, 0, zoo.steps, outlier_init)
    train_one(entry, acts_ND, activation_scale(acts_ND), world, zoo, out)  # type: ignore[arg-type]
    sae = SAE.load_from_disk(str(out))
    assert outlier_init == sae.cfg.metadata.evalkit_init.endswith("+outlier_aware")  # type: ignore[attr-defined]
    with torch.no_grad():
        return sae.encode(acts_ND) > 0, massive_N


def _massive_and_ordinary_l0(outlier_init: bool, tmp_path: Path) -> tuple[float, float]:
    firing_NF, massive_N = _planted_batch_topk_firing(outlier_init, tmp_path / f"outlier_init_{outlier_init}")
    return float(firing_NF[massive_N].sum(1).float().mean()), float(firing_NF[~massive_N].sum(1).float().mean())


def test_batch_topk_massive_tokens_take_the_batch_budget_unless_outlier_aware(tmp_path) -> None:
    """The failure seen on the embedded world, reproduced small: with the plain init the massive 8% of tokens fire
    tens of latents each and ordinary tokens get under one of the k=4; the outlier-aware init reverses that."""
    massive_plain, ordinary_plain = _massive_and_ordinary_l0(False, tmp_path)
    assert massive_plain > 20 and ordinary_plain < 2
    massive_aware, ordinary_aware = _massive_and_ordinary_l0(True, tmp_path)
    assert massive_aware < 8 and ordinary_aware > 3


class _FixedActsSAE:
    """Stands in for a batch-top-k SAE: encode returns preset activations, one tensor per batch."""

    def __init__(self, acts: list[torch.Tensor]) -> None:
        self.acts = iter(acts)
        self.topk_threshold = torch.tensor(0.0, dtype=torch.double)

    def encode(self, batch_BD: torch.Tensor) -> torch.Tensor:
        return next(self.acts)


def test_threshold_calibration_hand_case() -> None:
    from evalkit.sae.variants.common import calibrate_batch_threshold

    acts = [torch.tensor([[0.0, 1.0], [4.0, 0.0]]), torch.tensor([[3.0, 0.0], [0.0, 5.0]])]  # minima 1 and 3
    sae = _FixedActsSAE(acts)
    assert calibrate_batch_threshold(sae, iter([torch.zeros(2, 2)] * 2)) == 2.0  # type: ignore[arg-type]
    assert float(sae.topk_threshold) == 2.0 and sae.topk_threshold.dtype == torch.double


def _batch_topk_inference_l0(out: Path) -> float:
    firing_NF, _ = _planted_batch_topk_firing(True, out)
    return float(firing_NF.sum(1).float().mean())


def test_calibrated_batch_topk_fires_k_latents_per_token(tmp_path, monkeypatch) -> None:
    """The saved threshold is the mean batch minimum with the final weights, so inference l0 is close to k = 4;
    sae-lens' running average alone (from 0, rate 0.01, 150 steps) leaves it well above k."""
    from evalkit.world import zoo

    assert 3.4 < _batch_topk_inference_l0(tmp_path / "calibrated") < 4.6
    monkeypatch.setattr(zoo, "calibrate_batch_threshold", lambda sae, batches: float(sae.topk_threshold))
    assert _batch_topk_inference_l0(tmp_path / "running_average") > 6
