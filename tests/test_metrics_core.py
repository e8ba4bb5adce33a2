"""Core, downstream and sparsity metrics on hand-computed cases and planted ground truth."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from evalkit.engine.runconfig import DataSource, EvalSettings, handle_from_sae
from evalkit.engine.runner import Runner
from evalkit.engine.store import ResultStore
from metrics.base import select_metrics
from metrics.core import CodeSparsity, Reconstruction, Shrinkage
from metrics.downstream import DownstreamLoss
from metrics.sparsity import FeatureDensity

CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=0)


def sae_batch(
    x: list[list[float]],
    x_hat: list[list[float]],
    f: list[list[float]] | None = None,
    extras: dict[str, list[float]] | None = None,
) -> SaeBatch:
    x_TD, x_hat_TD = torch.tensor(x), torch.tensor(x_hat)
    f_TF = torch.tensor(f) if f is not None else torch.zeros(len(x), 1)
    return SaeBatch(
        sae=None,
        x_TD=x_TD,
        x_hat_TD=x_hat_TD,
        f_TF=f_TF,
        positions_T=torch.arange(len(x)),
        extras={k: torch.tensor(v) for k, v in (extras or {}).items()},
    )


def values(
    acc: Reconstruction | Shrinkage | CodeSparsity | DownstreamLoss | FeatureDensity, batches: list[SaeBatch]
) -> dict[str, float]:
    for b in batches:
        acc.update(b)
    return {v.metric: v.value for v in acc.compute() if v.latent is None}


def test_reconstruction_hand_computed() -> None:
    # x = (1,0), (3,0); x̂ = (1,0), (2,0): errors 0 and 1; μ = (2,0); ‖x−μ‖² = 1, 1.
    got = values(Reconstruction(None, CTX), [sae_batch([[1, 0], [3, 0]], [[1, 0], [2, 0]])])
    assert got["mse"] == pytest.approx(0.5)
    assert got["fvu"] == pytest.approx(0.5)
    assert got["explained_variance"] == pytest.approx(0.5)
    assert got["explained_variance_legacy"] == pytest.approx(0.5)  # mean of 1 − (0/1, 1/1)
    # SAEBench: E‖x‖² = 5, mean over (t, d) of x² = 2.5 → denominator 5 − 6.25 = −1.25 (not a variance).
    assert got["explained_variance_saebench"] == pytest.approx(1 - 0.5 / -1.25)


def test_shrinkage_and_codes_hand_computed() -> None:
    batch = sae_batch([[1, 0], [3, 0]], [[1, 0], [2, 0]], f=[[0.0, 2.0, 0.0], [-1.0, 0.5, 0.0]])
    shrink = values(Shrinkage(None, CTX), [batch])
    assert shrink["cossim"] == pytest.approx(1.0)
    assert shrink["l2_ratio"] == pytest.approx((1 + 2 / 3) / 2)
    assert shrink["relative_reconstruction_bias"] == pytest.approx(5 / 7)  # Σ‖x̂‖² = 5, Σ⟨x, x̂⟩ = 7
    codes = values(CodeSparsity(None, CTX), [batch])
    assert codes["l0"] == pytest.approx(1.5)  # a negative code counts as active
    assert codes["l1"] == pytest.approx(1.75)
    assert codes["l0_std"] == pytest.approx(0.5)  # per-token l0 = 1, 2


def test_fvu_streams_exactly_with_a_large_mean() -> None:
    """Running float64 sums over many batches equal the direct formula, even with a mean 1e4 × the spread."""
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(1000, 16, generator=gen)
    x_hat = x + 0.3 * torch.randn(1000, 16, generator=gen)
    batches = [sae_batch(x[i : i + 100].tolist(), x_hat[i : i + 100].tolist()) for i in range(0, 1000, 100)]
    got = values(Reconstruction(None, CTX), batches)
    x64, xh64 = x.double(), x_hat.double()
    direct = (x64 - xh64).pow(2).sum(-1).mean() / (x64 - x64.mean(0)).pow(2).sum(-1).mean()
    assert got["fvu"] == pytest.approx(float(direct), rel=1e-9)
    assert 0.05 < got["fvu"] < 0.15  # ≈ 0.09 = 0.3²; a float32 variance would be garbage here


def test_downstream_means_and_scores() -> None:
    nan = float("nan")
    batch = sae_batch(
        [[1.0]] * 3,
        [[1.0]] * 3,
        extras={
            "ce_clean": [1.0, 2.0, nan],
            "ce_sae": [2.0, 3.0, nan],
            "ce_zero": [5.0, 5.0, nan],
            "kl_sae": [0.5, 0.5, 0.2],
            "kl_zero": [2.0, 2.0, 2.0],
        },
    )
    got = values(DownstreamLoss(None, CTX), [batch])
    assert got["ce_loss_clean"] == pytest.approx(1.5)
    assert got["ce_loss_sae"] == pytest.approx(2.5)
    assert got["ce_loss_score"] == pytest.approx((5 - 2.5) / (5 - 1.5))
    assert got["kl_div_sae"] == pytest.approx(0.4)
    assert got["kl_div_score"] == pytest.approx((2 - 0.4) / 2)


def test_undefined_metric_has_no_row() -> None:
    """All tokens equal → zero variance: fvu is 0/0 and must be absent, not NaN."""
    got = values(Reconstruction(None, CTX), [sae_batch([[1, 1], [1, 1]], [[1, 1], [1, 1]])])
    assert "fvu" not in got and "explained_variance" not in got
    assert got["mse"] == 0.0


# --- planted ground truth through the runner -------------------------------------------------------------


def planted_sae() -> StandardSAE:
    """Latents 0,1 dead (negative bias, no input); 2,3 always on; 4 fires iff x0 > 0; 5 fires iff x1 > 0.5."""
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=6, metadata=SAEMetadata(hook_name="h")))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_dec.zero_()
        sae.W_enc[0, 4] = 1.0
        sae.W_enc[1, 5] = 1.0
        sae.b_enc.copy_(torch.tensor([-1.0, -1.0, 1.0, 1.0, 0.0, -0.5]))
    return sae


def planted_source(n_seq: int = 4, seq: int = 5) -> DataSource:
    """20 ordinary tokens: x0 = 1 on exactly 1 of them, x1 = 1 on 3; a BOS per sequence with x0 = x1 = 50."""
    acts = torch.zeros(n_seq, seq + 1, 4)
    acts[:, 0, :2] = 50.0  # BOS: would fire latents 4 and 5 if it were counted
    flat = acts[:, 1:].reshape(-1, 4)
    flat[7, 0] = 1.0
    flat[[2, 11, 17], 1] = 1.0
    acts[:, 1:] = flat.reshape(n_seq, seq, 4)
    special = torch.zeros(n_seq, seq + 1, dtype=torch.bool)
    special[:, 0] = True
    positions = torch.arange(seq + 1).expand(n_seq, -1).clone()

    def batches() -> Iterator[ActivationBatch]:
        for i in range(0, n_seq, 2):
            yield ActivationBatch(acts[i : i + 2], positions[i : i + 2], special[i : i + 2])

    return DataSource(batches, {"kind": "planted"}, hook_name="h")


def run_planted(tmp_path, settings: EvalSettings) -> dict[str, float | dict[int, float]]:
    runner = Runner(ResultStore(tmp_path), settings, select_metrics("sparsity,l0"))
    outcome = runner.run([handle_from_sae(planted_sae(), "planted")], {"h": planted_source()})
    vals: list[MetricValue] = [v for sh in outcome.results[0].shards for v in sh.values]
    got: dict[str, float | dict[int, float]] = {v.metric: v.value for v in vals if v.latent is None}
    got["density"] = {v.latent: v.value for v in vals if v.latent is not None}
    return got


def test_planted_dead_and_dense_latents(tmp_path) -> None:
    got = run_planted(tmp_path, EvalSettings(batch_size=2))
    assert got["density"] == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 1 / 20, 5: 3 / 20}
    assert got["dead_features"] == 2
    assert got["frac_alive"] == pytest.approx(4 / 6)
    assert got["dense_features"] == 3  # latents 2, 3 (always) and 5 (0.15 > 0.1)
    assert got["l0"] == pytest.approx(2 + 1 / 20 + 3 / 20)
    assert got["l1"] == pytest.approx(2 + 1 / 20 * 1.0 + 3 / 20 * 0.5)


def test_planted_with_special_tokens_included(tmp_path) -> None:
    got = run_planted(tmp_path, EvalSettings(batch_size=2, exclude_special=False))
    assert got["density"][4] == pytest.approx(5 / 24)  # 1 ordinary + 4 BOS tokens out of 24


def test_token_budget_and_max_norm_multiple(tmp_path) -> None:
    # Norms: the 20 ordinary tokens have norm 0 or 1, so the median is 0.
    got = run_planted(tmp_path, EvalSettings(batch_size=2, n_tokens=10))
    assert sum(1 for _ in got["density"]) == 6
    assert got["density"][5] == pytest.approx(1 / 10)  # only token 2 of the first 10 has x1 = 1
    got = run_planted(tmp_path / "b", EvalSettings(batch_size=2, exclude_special=False, max_norm_multiple=10.0))
    assert got["density"][4] == pytest.approx(0.0)  # x0 = 1 is above 10 × median (0) too: dropped with the BOS
    assert got["density"][2] == 1.0


def test_nan_activations_are_a_clear_error(tmp_path) -> None:
    acts = torch.zeros(1, 3, 4)
    acts[0, 1, 2] = float("nan")
    source = DataSource(
        lambda: [ActivationBatch(acts, torch.arange(3)[None], torch.zeros(1, 3, dtype=torch.bool))],
        {"kind": "activations", "path": "acts.safetensors"},
        hook_name="h",
    )
    runner = Runner(ResultStore(tmp_path), EvalSettings(), select_metrics("core"))
    with pytest.raises(EvalkitInputError, match=r"acts\.safetensors.*NaN"):
        runner.run([handle_from_sae(planted_sae(), "planted")], {"h": source})


def test_d_in_mismatch_names_the_sae_file(tmp_path) -> None:
    acts = torch.zeros(1, 3, 5)
    source = DataSource(
        lambda: [ActivationBatch(acts, torch.arange(3)[None], torch.zeros(1, 3, dtype=torch.bool))],
        {"kind": "activations"},
        hook_name="h",
    )
    handle = handle_from_sae(planted_sae(), "planted", path="/saes/planted")
    with pytest.raises(EvalkitInputError, match=r"/saes/planted.*d_in 4.*5"):
        Runner(ResultStore(tmp_path), EvalSettings(), select_metrics("core")).run([handle], {"h": source})
