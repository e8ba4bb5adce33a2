"""SAEBench core JSON: SAEBench's meaning under its keys, evalkit's under `evalkit_*`, valid against
CoreEvalOutput (sae-bench installed: `pip install evalkit[saebench]`) and always against the pinned key list;
the SAEBench-mirroring metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.saebench import validate_with_saebench

from evalkit.core.records import EvalContext, SaeBatch
from evalkit.engine.saebench import (
    DETAIL_FIELDS,
    REQUIRED_METRICS,
    SaeBenchInputs,
    check_required_keys,
    core_eval_output,
    missing_inputs,
)
from metrics.saebench import SaeBenchCore, max_cosine_to_others

D_SAE = 4


def inputs(**level_overrides: float) -> SaeBenchInputs:
    level = {ours: 0.5 for pairs in REQUIRED_METRICS.values() for _, ours in pairs}
    level |= {"explained_variance": 0.75, "fvu": 0.25, "mse": 113.9, "mse_saebench": 0.028}
    level |= level_overrides
    per_latent = {ours: {i: 0.1 * i for i in range(D_SAE)} for _, ours in DETAIL_FIELDS}
    del per_latent["consistent_activation_heuristic"][0]  # latent 0 never fired
    return SaeBenchInputs(
        sae_id="topk_k16",
        sae_level=level,
        per_latent=per_latent,
        d_sae=D_SAE,
        tokens_read=4096,
        tokens_evaluated=4064,
        context_size=128,
        batch_tokens=2048,
        dataset="world:default",
        model_name="tiny",
        exclude_special=True,
        eval_id="e" * 32,
        datetime_epoch_millis=1_700_000_000_000,
        sae_lens_version="6.54.0",
        evalkit_version="0.1.0",
        sae_cfg={"d_sae": D_SAE},
    )


def test_saebench_keys_hold_saebench_meaning_and_evalkit_keys_the_honest_values() -> None:
    doc = core_eval_output(inputs(explained_variance_saebench=0.98))
    assert doc is not None and check_required_keys(doc) == []
    rq = doc["eval_result_metrics"]["reconstruction_quality"]
    assert rq["mse"] == 0.028 and rq["evalkit_mse"] == 113.9
    assert rq["explained_variance"] == 0.98 and rq["evalkit_explained_variance"] == 0.75 and rq["evalkit_fvu"] == 0.25
    assert set(doc["eval_result_metrics"]) == {*REQUIRED_METRICS, "token_stats"}
    assert doc["eval_result_metrics"]["token_stats"]["total_tokens_eval_reconstruction"] == 4096
    assert doc["eval_config"]["dataset"] == "world:default" and doc["eval_config"]["batch_size_prompts"] == 16
    assert isinstance(doc["sae_bench_commit_hash"], str)
    assert doc["eval_result_unstructured"]["evalkit"]["explained_variance_formula_breaks"] is False
    details = doc["eval_result_details"]
    assert [d["index"] for d in details] == list(range(D_SAE))
    assert details[0]["consistent_activation_heuristic"] == 0.0  # never fired: 0, not NaN (strict JSON)
    json.dumps(doc, allow_nan=False)


def test_formula_failure_is_flagged() -> None:
    doc = core_eval_output(inputs(explained_variance_saebench=1.31))
    assert doc is not None
    assert doc["eval_result_unstructured"]["evalkit"]["explained_variance_formula_breaks"] is True
    assert doc["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] == 1.31


def test_missing_required_values_write_no_file() -> None:
    inp = inputs()
    level = dict(inp.sae_level)
    del level["ce_loss_score"], level["kl_div_sae"]
    partial = SaeBenchInputs(**{**inp.__dict__, "sae_level": level})
    assert missing_inputs(partial) == ["kl_div_sae", "ce_loss_score"]
    assert core_eval_output(partial) is None


def test_pinned_key_list_catches_the_old_shape() -> None:
    doc = core_eval_output(inputs())
    assert doc is not None
    old = json.loads(json.dumps(doc))
    old["eval_result_metrics"]["misc"] = old["eval_result_metrics"].pop("misc_metrics")
    del old["eval_result_metrics"]["shrinkage"]["l2_norm_in"]
    old["eval_config"]["dataset"] = None
    old["sae_bench_commit_hash"] = None
    for row in old["eval_result_details"]:
        del row["encoder_norm"]
    problems = check_required_keys(old)
    assert "sae_bench_commit_hash is not a string" in problems
    assert "eval_config.dataset is not a string" in problems
    assert "shrinkage.l2_norm_in is not a finite number" in problems
    assert "misc_metrics.frac_alive is not a finite number" in problems
    assert any("encoder_norm" in p for p in problems)


def test_valid_against_saebench_core_eval_output() -> None:
    doc = core_eval_output(inputs(explained_variance_saebench=1.31))
    assert doc is not None
    validate_with_saebench(json.loads(json.dumps(doc)))


def _batch(x_TD: torch.Tensor, x_hat_TD: torch.Tensor, f_TF: torch.Tensor, seq_T: torch.Tensor) -> SaeBatch:
    return SaeBatch(
        sae=None,
        x_TD=x_TD,
        x_hat_TD=x_hat_TD,
        f_TF=f_TF,
        positions_T=torch.zeros(len(x_TD), dtype=torch.long),
        extras={"seq_index": seq_T},
    )


def test_saebench_core_accumulator_hand_computed() -> None:
    ctx = EvalContext(median_norm=1.0, norm_q25=0.5, norm_q75=2.0, n_tokens=6)
    acc = SaeBenchCore(None, ctx)
    # batch 1: 2 tokens, errors 1 and 3 -> contributes (1 + 3) / 2; batch 2: 4 tokens, errors 2 each -> 8 / 4
    x1 = torch.tensor([[1.0, 0.0], [0.0, 3.0**0.5]])
    acc.update(_batch(x1, torch.zeros(2, 2), torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), torch.tensor([0, 0])))
    x2 = torch.full((4, 2), 1.0)
    f2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    acc.update(_batch(x2, torch.zeros(4, 2), f2, torch.tensor([1, 1, 2, 2])))
    values = {(v.metric, v.latent): v.value for v in acc.compute()}
    assert values[("mse_saebench", None)] == pytest.approx((4 / 2 + 8 / 4) / 6)
    assert values[("l2_norm_in", None)] == pytest.approx((1 + 3**0.5 + 4 * 2**0.5) / 6)
    assert values[("l2_norm_out", None)] == 0.0
    # latent 0 fires on 4 tokens in 3 sequences; latent 1 once in one; latent 2 never (no row)
    assert values[("consistent_activation_heuristic", 0)] == pytest.approx(4 / 3)
    assert values[("consistent_activation_heuristic", 1)] == 1.0
    assert ("consistent_activation_heuristic", 2) not in values
    # densities 4/6, 1/6, 0: all three... two over 1% and over 10%
    assert values[("freq_over_1_percent", None)] == pytest.approx(2 / 3)
    assert values[("normalized_freq_over_10_percent", None)] == pytest.approx(1.0)


def test_max_cosine_to_others_matches_brute_force_across_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(37, 5, generator=g)
    unit = torch.nn.functional.normalize(v.double(), dim=-1)
    sims = unit @ unit.T
    sims.fill_diagonal_(-math.inf)
    assert torch.allclose(max_cosine_to_others(v, block=8), sims.max(dim=1).values)
