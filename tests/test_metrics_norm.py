"""Norm-detector metrics against planted activations whose firing pattern is known token by token."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sklearn.metrics import roc_auc_score

from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.norm import (
    N_BINS,
    NormDetectors,
    NormQuartiles,
    auroc_from_histograms,
    norm_bins,
    norm_dependence_metric,
    quartile_index,
)

N_TOKENS, SEQ_LEN, D_IN = 400, 16, 8


def context_for(norms_T: torch.Tensor) -> EvalContext:
    q = torch.quantile(norms_T.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return EvalContext(median_norm=float(q[1]), norm_q25=float(q[0]), norm_q75=float(q[2]), n_tokens=norms_T.numel())


def run_stream(
    sae: torch.nn.Module, x_TD: torch.Tensor, positions_T: torch.Tensor, ctx: EvalContext, n_batches: int = 3
) -> list[MetricValue]:
    accs = [NormDetectors(sae, ctx), NormQuartiles(sae, ctx)]  # the group's two entries
    with torch.no_grad():
        for x, pos in zip(x_TD.chunk(n_batches), positions_T.chunk(n_batches), strict=True):
            f = sae.encode(x)
            batch = SaeBatch(sae=sae, x_TD=x, x_hat_TD=sae.decode(f), f_TF=f, positions_T=pos)
            for acc in accs:
                acc.update(batch)
    return [v for acc in accs for v in acc.compute()]


def sae_level(values: list[MetricValue]) -> dict[str, float]:
    return {v.metric: v.value for v in values if v.latent is None}


def latent_values(values: list[MetricValue], name: str) -> dict[int, float]:
    return {v.latent: v.value for v in values if v.metric == name and v.latent is not None}


@pytest.fixture(scope="module")
def planted() -> tuple[StandardSAE, torch.Tensor, torch.Tensor, torch.Tensor, EvalContext]:
    """Tokens x_t = n_t·v_t with ⟨v_t, e_0⟩ = 0.6 for all t and ±0.4 along e_1, e_2, e_3 by design:
    e_1 random sign (a direction feature), e_2 positive exactly on top-quartile tokens (a direction that
    only occurs on large tokens), e_3 positive exactly at position 0. Latents read these axes:
    0: ⟨x, e_0⟩ > 0.6·q75, i.e. fires iff n_t ≥ q75 (a pure norm detector; rescaled to m it never fires);
    1: e_1 > 0; 2: e_2 > 0; 3: e_3 > 0 (position 0); 4: like 0 but only on the 10 largest tokens.
    """
    gen = torch.Generator().manual_seed(7)
    norms_T = torch.linspace(1.0, 5.0, N_TOKENS)[torch.randperm(N_TOKENS, generator=gen)]
    positions_T = torch.arange(N_TOKENS) % SEQ_LEN
    ctx = context_for(norms_T)
    s1 = torch.where(torch.rand(N_TOKENS, generator=gen) < 0.5, 1.0, -1.0)
    s2 = torch.where(norms_T >= ctx.norm_q75, 1.0, -1.0)
    s3 = torch.where(positions_T == 0, 1.0, -1.0)
    v_TD = torch.zeros(N_TOKENS, D_IN)
    v_TD[:, 0], v_TD[:, 1], v_TD[:, 2], v_TD[:, 3], v_TD[:, 4] = 0.6, 0.4 * s1, 0.4 * s2, 0.4 * s3, 0.4
    x_TD = norms_T.unsqueeze(1) * v_TD
    tenth_largest = float(norms_T.sort(descending=True).values[9])
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=5))
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.copy_(torch.eye(D_IN)[:, [0, 1, 2, 3, 0]])
        sae.W_dec.copy_(torch.eye(D_IN)[[0, 1, 2, 3, 0]])
        sae.b_enc.copy_(
            torch.tensor([-0.6 * ctx.norm_q75 * (1 - 1e-6), 0.0, 0.0, 0.0, -0.6 * tenth_largest * (1 - 1e-6)])
        )
    return sae, x_TD, norms_T, positions_T, ctx


def test_planted_detectors_are_counted(planted) -> None:
    sae, x_TD, norms_T, positions_T, ctx = planted
    values = run_stream(sae, x_TD, positions_T, ctx)
    agg = sae_level(values)
    assert agg["norm_detectors"] == 1  # latent 0 only; latent 4 has 10 firings, too few to classify
    assert agg["norm_detectors_q4"] == 2  # latents 0 and 2
    assert agg["norm_detectors_auroc"] == 2  # latents 0 and 2
    assert agg["norm_detectors_renorm"] == 1  # latent 0
    assert agg["sink_detectors"] == 1  # latent 3
    assert agg["norm_outlier_tokens"] == 0

    q4 = latent_values(values, "norm_q4_share")
    fires1 = x_TD[:, 1] > 0
    assert q4[0] == 1.0 and q4[2] == 1.0 and q4[4] == 1.0
    assert q4[1] == pytest.approx(float((fires1 & (norms_T >= ctx.norm_q75)).sum() / fires1.sum()), abs=1e-12)
    survival = latent_values(values, "norm_renorm_survival")
    assert survival == pytest.approx({0: 0.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 0.0})
    auroc = latent_values(values, "norm_auroc")
    assert auroc[0] > 0.99 and auroc[2] > 0.99


def test_outlier_tokens_make_sinks() -> None:
    norms_T = torch.cat([torch.full((380,), 1.0) + torch.rand(380) * 0.1, torch.full((20,), 50.0)])
    x_TD = torch.zeros(400, D_IN)
    x_TD[:, 0] = norms_T
    x_TD[:380, 1] = 1e-3  # tiny so the norms stay as planted
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=2))
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc.copy_(torch.eye(D_IN)[:, [0, 1]])
        sae.b_enc.copy_(torch.tensor([-10.0, 0.0]))  # latent 0 fires only on the 20 outliers
    agg = sae_level(run_stream(sae, x_TD, torch.arange(400) % SEQ_LEN + 1, context_for(norms_T)))
    assert agg["norm_outlier_tokens"] == 20
    assert agg["sink_detectors"] == 1


def test_flat_data_has_no_position_sinks(planted) -> None:
    """Without sequence structure (every token at position 0) position 0 is no evidence of a sink."""
    sae, x_TD, _, positions_T, ctx = planted
    agg = sae_level(run_stream(sae, x_TD, torch.zeros_like(positions_T), ctx))
    assert agg["sink_detectors"] == 0


def test_quartile_reconstruction_matches_direct_computation(planted) -> None:
    sae, x_TD, norms_T, positions_T, ctx = planted
    values = run_stream(sae, x_TD, positions_T, ctx, n_batches=4)
    agg = sae_level(values)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x_TD)).double()
    x = x_TD.double()
    q_T = quartile_index(norms_T, ctx)
    for j in range(4):
        m = q_T == j
        err = (x[m] - x_hat[m]).pow(2).sum(dim=1)
        fvu = err.sum() / (x[m] - x[m].mean(dim=0)).pow(2).sum()
        assert agg[f"fvu_norm_q{j + 1}"] == pytest.approx(float(fvu), rel=1e-9)
        rel = (err / x[m].pow(2).sum(dim=1)).mean()
        assert agg[f"rel_mse_norm_q{j + 1}"] == pytest.approx(float(rel), rel=1e-9)
    m4 = q_T == 3
    assert agg["l2_ratio_norm_q4"] == pytest.approx(float((x_hat[m4].norm(dim=1) / x[m4].norm(dim=1)).mean()))
    assert int(m4.sum()) == N_TOKENS // 4


def test_streaming_auroc_matches_sklearn() -> None:
    """Random log-normal norms and firings whose probability rises with the norm: the binned AUC stays within
    its stated tie bound of scikit-learn's exact value (and within 2e-3)."""
    gen = torch.Generator().manual_seed(11)
    norms_T = torch.exp(0.3 * torch.randn(3000, generator=gen, dtype=torch.float64)) * 20
    ctx = context_for(norms_T)
    bins_T = norm_bins(norms_T, ctx)
    logit = (norms_T.log() - norms_T.log().mean()) / 0.3
    fires_TF = torch.rand(3000, 6, generator=gen, dtype=torch.float64) < torch.sigmoid(
        logit.unsqueeze(1) * torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, -1.0], dtype=torch.float64)
    )
    pos_FB = torch.stack([torch.bincount(bins_T[fires_TF[:, i]], minlength=N_BINS) for i in range(6)])
    total_B = torch.bincount(bins_T, minlength=N_BINS)
    ours = auroc_from_histograms(pos_FB, total_B)
    for i in range(6):
        exact = roc_auc_score(fires_TF[:, i].numpy(), norms_T.numpy())
        neg_B = total_B - pos_FB[i]
        tie_bound = 0.5 * float((pos_FB[i] * neg_B).sum()) / float(pos_FB[i].sum() * neg_B.sum())
        assert abs(float(ours[i]) - exact) <= tie_bound + 1e-12
        assert float(ours[i]) == pytest.approx(exact, abs=2e-3)


def test_accumulated_auroc_matches_sklearn() -> None:
    """Through the whole accumulator (several batches, a random ReLU SAE with biases so firing depends on the
    norm): every latent's AUROC agrees with scikit-learn on the exact norms."""
    gen = torch.Generator().manual_seed(12)
    x_TD = torch.randn(2000, D_IN, generator=gen) * torch.exp(0.4 * torch.randn(2000, 1, generator=gen))
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=6))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, 6, generator=gen))
        sae.b_enc.copy_(torch.linspace(-2.0, 0.5, 6))
        sae.b_dec.copy_(0.3 * torch.randn(D_IN, generator=gen))
    norms_T = x_TD.norm(dim=1)
    values = run_stream(sae, x_TD, torch.arange(2000) % SEQ_LEN, context_for(norms_T), n_batches=4)
    auroc = latent_values(values, "norm_auroc")
    with torch.no_grad():
        fires_TF = (sae.encode(x_TD) != 0).numpy()
    assert len(auroc) == 6
    for i, value in auroc.items():
        assert value == pytest.approx(roc_auc_score(fires_TF[:, i], norms_T.numpy()), abs=2e-3)


def test_cosine_with_zero_exponent_survives_renorm() -> None:
    from evalkit.sae.variants.cosine import CosineSAE, CosineSAEConfig

    sae = CosineSAE(CosineSAEConfig(d_in=D_IN, d_sae=12, k=3))
    with torch.no_grad():
        sae.a.zero_()  # pure cosine: the score ignores ‖x‖
        sae.b_dec.zero_()
    gen = torch.Generator().manual_seed(5)
    x_TD = torch.randn(300, D_IN, generator=gen) * torch.exp(torch.randn(300, 1, generator=gen))
    ctx = context_for(x_TD.norm(dim=1))
    values = run_stream(sae, x_TD, torch.arange(300) % SEQ_LEN, ctx)
    survival = latent_values(values, "norm_renorm_survival")
    assert len(survival) >= 6  # most latents fire somewhere
    assert all(v == 1.0 for v in survival.values())
    assert sae_level(values)["norm_detectors_renorm"] == 0
    assert sae_level(norm_dependence_metric(sae, ctx))["norm_dependence_a"] == 0.0


def test_norm_dependence_values() -> None:
    from evalkit.sae.variants.cosine import CosineSAE, CosineSAEConfig

    ctx = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=1)
    standard = norm_dependence_metric(StandardSAE(StandardSAEConfig(d_in=4, d_sae=3)), ctx)
    assert sae_level(standard)["norm_dependence_a"] == 1.0
    assert latent_values(standard, "norm_dependence_a_latent") == {0: 1.0, 1: 1.0, 2: 1.0}
    cosine = CosineSAE(CosineSAEConfig(d_in=4, d_sae=3, k=1, per_feature=True))
    with torch.no_grad():
        cosine.a.copy_(torch.tensor([0.1, 0.2, 0.6]))
    values = norm_dependence_metric(cosine, ctx)
    assert sae_level(values)["norm_dependence_a"] == pytest.approx(0.3)
    assert latent_values(values, "norm_dependence_a_latent") == pytest.approx({0: 0.1, 1: 0.2, 2: 0.6})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_metrics_agree_on_cuda(planted) -> None:
    """Batches may arrive on the GPU: the norm, AFA and concept accumulators give the CPU values there."""
    import copy

    from metrics.afa import AfaEpsilon
    from metrics.concepts import ConceptAlignment

    sae, x_TD, _, positions_T, ctx = planted
    labels_TL = x_TD[:, 1:4] > 0
    results = {}
    for device in ("cpu", "cuda"):
        dev_sae = copy.deepcopy(sae).to(device)
        accs = [cls(dev_sae, ctx) for cls in (NormDetectors, NormQuartiles, AfaEpsilon, ConceptAlignment)]
        with torch.no_grad():
            x, pos, lab = x_TD.to(device), positions_T.to(device), labels_TL.to(device)
            f = dev_sae.encode(x)
            batch = SaeBatch(sae=dev_sae, x_TD=x, x_hat_TD=dev_sae.decode(f), f_TF=f, positions_T=pos, labels_TL=lab)
            for acc in accs:
                acc.update(batch)
        results[device] = {(v.metric, v.latent): v.value for acc in accs for v in acc.compute()}
    assert results["cpu"].keys() == results["cuda"].keys()
    for key, value in results["cpu"].items():
        assert results["cuda"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
