"""Token-level standard errors (metrics.jackknife) on planted data with known answers.

- i.i.d. tokens: the analytic standard errors of mse and l0;
- coverage: 95% intervals of fvu and ce_loss_score over 200 seeded synthetic repeats with correlated tokens within
  a sequence (accumulator-level data, no model);
- a ratio metric (fvu) where the naive per-token formula is wrong and the jackknife is right;
- the wrapper changes no point estimate and follows the state protocol itself (checkpoints, split runs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evalkit.core.records import EvalContext, SaeBatch
from evalkit.core.uncertainty import Estimate, interval
from metrics.core import CodeSparsity, Reconstruction
from metrics.downstream import EXTRA_KEYS, DownstreamLoss
from metrics.jackknife import BLOCK_KEY, BlockJackknife, block_index, seqs_per_block
from metrics.saebench import SaeBenchCore

STREAM_WITH_STDERR = (
    *("mse", "fvu", "explained_variance", "explained_variance_legacy", "cossim", "l2_ratio"),
    *("relative_reconstruction_bias", "l0", "l1", "ce_loss_clean", "ce_loss_sae", "ce_loss_score", "kl_div_score"),
)
CTX = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=1.5, n_tokens=0)


def _batch(
    x_TD: torch.Tensor, x_hat_TD: torch.Tensor, seq_T: torch.Tensor, n_blocks: int, run_len: int = 1, **kw
) -> SaeBatch:
    """A hand-built batch with the runner's block assignment (runs of `run_len` sequences dealt to K blocks)."""
    f_TF = kw.pop("f_TF", torch.zeros(x_TD.shape[0], 1))
    extras = {BLOCK_KEY: block_index(seq_T, run_len, n_blocks), **kw.pop("extras", {})}
    return SaeBatch(None, x_TD, x_hat_TD, f_TF, torch.zeros(x_TD.shape[0], dtype=torch.long), extras=extras, **kw)


def _values(acc: BlockJackknife) -> dict[str, tuple[float, float | None]]:
    return {v.metric: (v.value, v.stderr) for v in acc.compute() if v.latent is None}


def test_iid_tokens_mse_and_l0_stderr_match_the_analytic_values() -> None:
    """x̂ = x + σ·ε, ε ~ N(0, I_d): ‖x − x̂‖² = σ²χ²_d, SE(mse) = σ²√(2d/n). Codes fire i.i.d. with probability
    p on F latents: l0 ~ Binomial(F, p), SE(l0) = √(F·p(1 − p)/n). K = 128 blocks (the estimate's own relative
    spread is 1/√(2·127) ≈ 6%); n = 16,384 tokens, 2,048 sequences of 8 tokens in 4 batches."""
    gen = torch.Generator().manual_seed(11)
    d, sigma, n_feat, p, n_seq, seq_len, k = 16, 0.5, 64, 0.1, 2048, 8, 128
    recon, codes = BlockJackknife(Reconstruction, None, CTX), BlockJackknife(CodeSparsity, None, CTX)
    for batch_seqs in torch.arange(n_seq).chunk(4):  # one run per block: 128 runs of 4 sequences
        seq_T = batch_seqs.repeat_interleave(seq_len) // 4
        x = torch.randn(seq_T.numel(), d, generator=gen)
        x_hat = x + sigma * torch.randn(seq_T.numel(), d, generator=gen)
        f = (torch.rand(seq_T.numel(), n_feat, generator=gen) < p).float()
        batch = _batch(x, x_hat, seq_T, k, f_TF=f)
        recon.update(batch)
        codes.update(batch)
    n = n_seq * seq_len
    _, se_mse = _values(recon)["mse"]
    _, se_l0 = _values(codes)["l0"]
    assert se_mse == pytest.approx(sigma**2 * math.sqrt(2 * d / n), rel=0.15)
    assert se_l0 == pytest.approx(math.sqrt(n_feat * p * (1 - p) / n), rel=0.15)


def _sequence_data(gen: np.random.Generator, n_seq: int, seq_len: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """x = μ + a_s + e_t and x̂ = x + r with r = 0.5·(b_s + u_t): a sequence effect shared by its tokens (in x and
    in the error), so tokens of one sequence are correlated. E‖x − μ‖² = 2d, E‖x − x̂‖² = 0.25·2d: fvu = 0.25."""
    a = gen.normal(size=(n_seq, 1, d))
    x = 3.0 + a + gen.normal(size=(n_seq, seq_len, d))
    r = 0.5 * (gen.normal(size=(n_seq, 1, d)) + gen.normal(size=(n_seq, seq_len, d)))
    return x.reshape(-1, d), (x + r).reshape(-1, d)


def _ce_data(gen: np.random.Generator, n_seq: int, seq_len: int) -> dict[str, np.ndarray]:
    """Per-token CE/KL with a per-sequence difficulty shared by clean, SAE and zero ablation (as in real text).
    E clean = 2, E sae = 2.3, E zero = 5: ce_loss_score = (5 − 2.3)/(5 − 2) = 0.9; E kl_sae = 0.3, kl_zero = 3."""
    hard = gen.gamma(2.0, 0.5, size=(n_seq, 1)) - 1.0  # mean 0, shared within a sequence
    shape = (n_seq, seq_len)
    clean = 2.0 + hard + 0.5 * gen.normal(size=shape)
    sae = clean + gen.gamma(1.5, 0.2, size=shape)
    zero = clean + 3.0 + hard + gen.normal(size=shape)
    kl_sae = gen.gamma(1.5, 0.2, size=shape)
    kl_zero = gen.gamma(3.0, 1.0, size=shape)
    return {k: v.reshape(-1) for k, v in zip(EXTRA_KEYS, (clean, sae, zero, kl_sae, kl_zero), strict=True)}


def test_coverage_of_fvu_and_ce_loss_score_intervals() -> None:
    """Over 200 seeded repeats, the 95% interval (t with K − 1 df) covers the true value 90–99% of the time."""
    n_rep, n_seq, seq_len, d, k = 200, 96, 12, 4, 32
    hits = {"fvu": 0, "ce_loss_score": 0}
    truth = {"fvu": 0.25, "ce_loss_score": 0.9}
    for rep in range(n_rep):
        gen = np.random.default_rng(1000 + rep)
        x, x_hat = _sequence_data(gen, n_seq, seq_len, d)
        ce = _ce_data(gen, n_seq, seq_len)
        recon, down = BlockJackknife(Reconstruction, None, CTX), BlockJackknife(DownstreamLoss, None, CTX)
        for seqs in np.array_split(np.arange(n_seq), 3):  # 3 source batches, each cut into blocks
            rows = np.concatenate([np.arange(s * seq_len, (s + 1) * seq_len) for s in seqs])
            seq_T = torch.from_numpy(np.repeat(seqs, seq_len))
            extras = {key: torch.from_numpy(v[rows]) for key, v in ce.items()}
            x_b, x_hat_b = torch.from_numpy(x[rows]), torch.from_numpy(x_hat[rows])
            batch = _batch(x_b, x_hat_b, seq_T, k, seqs_per_block(32, k), extras=extras)
            recon.update(batch)
            down.update(batch)
        for name, acc in (("fvu", recon), ("ce_loss_score", down)):
            value, se = _values(acc)[name]
            low, high = interval(Estimate(value, token_se=se, token_df=k - 1))
            hits[name] += low <= truth[name] <= high
    for name, count in hits.items():
        assert 0.90 <= count / n_rep <= 0.99, (name, count / n_rep)


def test_ratio_metric_naive_per_token_formula_is_wrong_jackknife_is_right() -> None:
    """fvu when the error is proportional to the token's spread: err_t = c²‖x_t − μ‖²·(1 + 0.1·η_t) with
    heavy-tailed ‖x_t − μ‖. Numerator and denominator move together, so fvu hardly varies; the naive formula
    sd_t(err_t) / (√n · total variance) treats the denominator as fixed and is several times too large. The
    truth is the spread of fvu over 300 independent repeats."""
    n_rep, n_tok, d, c, k = 300, 2048, 8, 0.3, 32
    fvus, jack, naive = [], [], []
    for rep in range(n_rep):
        gen = np.random.default_rng(50_000 + rep)
        scale = np.exp(gen.normal(scale=1.0, size=(n_tok, 1)))  # log-normal token norms
        dev = scale * gen.normal(size=(n_tok, d))
        x = 5.0 + dev
        shrink = c * np.sqrt(1 + 0.1 * gen.normal(size=(n_tok, 1)).clip(-5, 5))
        x_hat = x - shrink * dev  # ‖x − x̂‖² = shrink²‖dev‖²
        acc = BlockJackknife(Reconstruction, None, CTX)
        # One-token sequences in contiguous runs, one run per block.
        seq_T = torch.arange(n_tok)
        acc.update(_batch(torch.from_numpy(x), torch.from_numpy(x_hat), seq_T, k, n_tok // k))
        value, se = _values(acc)["fvu"]
        fvus.append(value)
        jack.append(se)
        err = ((x - x_hat) ** 2).sum(1)
        total_var = ((x - x.mean(0)) ** 2).sum(1).mean()
        naive.append(err.std(ddof=1) / math.sqrt(n_tok) / total_var)
    true_se = float(np.std(fvus, ddof=1))
    assert float(np.mean(jack)) == pytest.approx(true_se, rel=0.2)
    assert float(np.mean(naive)) > 3 * true_se


def _planted_stream(n_batches: int = 4) -> list[SaeBatch]:
    gen = torch.Generator().manual_seed(5)
    batches = []
    for b in range(n_batches):
        seq_T = torch.arange(8 * b, 8 * b + 8).repeat_interleave(6)
        x = torch.randn(48, 5, generator=gen) + 2
        x_hat = 0.8 * x + 0.1 * torch.randn(48, 5, generator=gen)
        f = torch.relu(torch.randn(48, 7, generator=gen))
        batches.append(_batch(x, x_hat, seq_T, 16, f_TF=f))
    return batches


def test_wrapper_changes_no_point_estimate() -> None:
    """All blocks merged = one accumulator over the stream (legacy explained variance included: it keeps the
    source batch's mean when a batch is cut into blocks, SAEBench's mse its token count)."""
    for cls in (Reconstruction, CodeSparsity, SaeBenchCore):
        plain, wrapped = cls(None, CTX), BlockJackknife(cls, None, CTX)
        for batch in _planted_stream():
            plain.update(batch)
            wrapped.update(batch)
        expected = {v.metric: v.value for v in plain.compute()}
        got = {v.metric: v.value for v in wrapped.compute()}
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        stream_values = [v for v in wrapped.compute() if v.latent is None and v.metric in STREAM_WITH_STDERR]
        assert all(v.stderr is not None and v.stderr > 0 for v in stream_values)


def test_wrapper_state_protocol_split_and_checkpoint() -> None:
    """Two workers on halves of the stream, merged — and a save/load midway — give the same values and errors."""
    stream = _planted_stream()
    whole, first, second = (BlockJackknife(Reconstruction, None, CTX) for _ in range(3))
    for batch in stream:
        whole.update(batch)
    for batch in stream[:2]:
        first.update(batch)
    resumed = BlockJackknife(Reconstruction, None, CTX)
    resumed.load_state_dict(first.state_dict())
    for batch in stream[2:]:
        second.update(batch)
    resumed.merge(second)
    for a, b in zip(whole.compute(), resumed.compute(), strict=True):
        assert a.metric == b.metric
        assert b.value == pytest.approx(a.value, rel=1e-9)
        assert b.stderr == pytest.approx(a.stderr, rel=1e-6)


def test_few_blocks_give_no_stderr() -> None:
    acc = BlockJackknife(Reconstruction, None, CTX)
    x = torch.randn(40, 3)
    acc.update(_batch(x, 0.5 * x, torch.arange(40) // 10, 32))  # 4 sequences: 4 blocks < MIN_BLOCKS
    assert all(v.stderr is None for v in acc.compute())


def test_runner_attaches_stderr_to_stream_metrics_and_none_to_weight_metrics(tmp_path) -> None:
    """A real run: every SAE-level core/downstream value has a finite stderr; alignment (weights alone) has none,
    nor have counts of latents past a threshold (dead_features, SAEBench's freq_over_*); results.csv ends with the
    stderr column, empty for alignment; --stderr-blocks 0 turns them off."""
    from helpers.run_support import handles, model_source, run_specs, tiny_saes, tiny_tokens, trained_tiny_model

    from evalkit.engine.outputs import RESULTS_COLUMNS, SaeOutput, write_outputs
    from evalkit.engine.runconfig import EvalSettings

    source = model_source(trained_tiny_model(), tiny_tokens(n_seq=48), batch_size=16)
    outcome = run_specs(handles(tiny_saes()), source, "core,downstream,alignment,sparsity", tmp_path / "a")
    for result in outcome.results:
        values = [v for sh in result.shards for v in sh.values if v.latent is None]
        stream = [v for v in values if v.metric in STREAM_WITH_STDERR]
        assert len(stream) == len(STREAM_WITH_STDERR)
        assert all(v.stderr is not None and math.isfinite(v.stderr) for v in stream), stream
        assert all(v.stderr is None for v in values if v.metric.startswith("alignment"))
        se = {v.metric: v.stderr for v in values}
        assert se["mse"] > 0 and se["ce_loss_score"] > 0 and se["kl_div_score"] > 0 and se["mse_saebench"] > 0
        assert se["dead_features"] is None and se["dense_features"] is None and se["freq_over_1_percent"] is None
    write_outputs(tmp_path / "a", [SaeOutput(r.handle, r.hook, r.shards) for r in outcome.results], {}, {})
    import pandas as pd

    table = pd.read_csv(tmp_path / "a" / "results.csv")
    assert tuple(table.columns) == RESULTS_COLUMNS and RESULTS_COLUMNS[-1] == "stderr"
    assert table[table["metric"].str.startswith("alignment")]["stderr"].isna().all()
    assert table[table["metric"] == "fvu"]["stderr"].notna().all()
    off = run_specs(handles(tiny_saes()), source, "core", tmp_path / "b", EvalSettings(batch_size=4, stderr_blocks=0))
    assert all(v.stderr is None for r in off.results for sh in r.shards for v in sh.values)


def test_runs_per_batch_fill_the_blocks_with_as_few_runs_as_it_takes() -> None:
    """A batch of 32 sequences: 8 runs of 4 when the number of batches is unknown; ⌈K / n_batches⌉ runs when the
    pre-pass knows it (16 batches: 2 runs of 16); whole batches once there are ≥ K of them. Every block is filled."""
    assert seqs_per_block(32, 32) == 4
    assert seqs_per_block(32, 32, n_batches=16) == 16
    assert seqs_per_block(32, 32, n_batches=40) == 32
    assert seqs_per_block(32, 4, n_batches=1) == 8  # K = 4 < 8 runs: one run per block
    for n_batches in (5, 16, 40):
        run_len = seqs_per_block(32, 32, n_batches)
        blocks = block_index(torch.arange(32 * n_batches), run_len, 32)
        assert set(blocks.tolist()) == set(range(32)), n_batches
        runs_per_batch = len(set((torch.arange(32) // run_len).tolist()))
        assert runs_per_batch == min(8, -(-32 // n_batches))
