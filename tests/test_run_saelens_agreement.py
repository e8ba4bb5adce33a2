"""The runner against sae-lens' own `run_evals` on the same SAE, tokens and special-token policy.

sae-lens batches by prompts and masks special tokens by id; the runner is given the same batches (batch_size
4) and the same special tokens, so per-batch conventions (legacy explained variance, per-batch relative
reconstruction bias) line up. fvu and explained_variance_saebench have no sae-lens counterpart and are checked
against their formulas directly.
"""

from __future__ import annotations

import pytest
import torch
from helpers.run_support import (
    HOOK,
    SPECIAL_IDS,
    handles,
    model_source,
    run_specs,
    tiny_saes,
    tiny_tokens,
    trained_tiny_model,
    values_by_sae,
)
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.training.activation_scaler import ActivationScaler

BATCH = 4
REL = 1e-3


class FixedTokenStore:
    """The slice of sae-lens' ActivationsStore that run_evals uses, over a fixed token tensor."""

    def __init__(self, tokens: torch.Tensor, batch_size: int) -> None:
        self.tokens = tokens
        self.store_batch_size_prompts = batch_size
        self.context_size = tokens.shape[1]
        self._next = 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        batch = self.tokens[self._next : self._next + n]
        self._next += n
        return batch

    def reset_input_dataset(self) -> None:
        self._next = 0


@pytest.fixture(scope="module")
def setup() -> dict:
    model = trained_tiny_model()
    tokens = tiny_tokens(n_seq=12)
    saes = tiny_saes()
    return {"model": model, "tokens": tokens, "saes": saes}


@pytest.fixture(scope="module")
def ours(setup: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    source = model_source(setup["model"], setup["tokens"], BATCH)
    outcome = run_specs(handles(setup["saes"]), source, "core,downstream,sparsity", tmp_path_factory.mktemp("out"))
    return values_by_sae(outcome)


def saelens_metrics(setup: dict, sae_index: int) -> dict[str, float]:
    n_batches = setup["tokens"].shape[0] // BATCH
    cfg = EvalConfig(
        batch_size_prompts=BATCH,
        n_eval_reconstruction_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        n_eval_sparsity_variance_batches=n_batches,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    store = FixedTokenStore(setup["tokens"], BATCH)
    metrics, _ = run_evals(
        setup["saes"][sae_index],
        store,
        setup["model"],
        ActivationScaler(),
        cfg,
        exclude_special_tokens=list(SPECIAL_IDS),
    )
    flat = {k: v for group in metrics.values() for k, v in group.items()}
    return {
        "mse": flat["mse"],
        "cossim": flat["cossim"],
        "l2_ratio": flat["l2_ratio"],
        "relative_reconstruction_bias": flat["relative_reconstruction_bias"],
        "l0": flat["l0"],
        "l1": flat["l1"],
        "explained_variance": flat["explained_variance"],
        "explained_variance_legacy": flat["explained_variance_legacy"],
        "ce_loss_score": flat["ce_loss_score"],
        "kl_div_score": flat["kl_div_score"],
        "ce_loss_clean": flat["ce_loss_without_sae"],
        "ce_loss_sae": flat["ce_loss_with_sae"],
        "ce_loss_zero_ablation": flat["ce_loss_with_ablation"],
        "kl_div_sae": flat["kl_div_with_sae"],
        "kl_div_zero_ablation": flat["kl_div_with_ablation"],
    }


@pytest.mark.parametrize("sae_index", [0, 1], ids=["standard", "topk"])
def test_matches_saelens_run_evals(setup: dict, ours: dict, sae_index: int) -> None:
    reference = saelens_metrics(setup, sae_index)
    mine = ours[f"sae{sae_index}"]
    for name, expected in reference.items():
        # relative_reconstruction_bias: sae-lens averages per-batch ratios, evalkit takes the global ratio
        assert mine[name] == pytest.approx(expected, rel=REL, abs=1e-6), name


def test_fvu_and_saebench_formula_on_full_tensor(setup: dict, ours: dict) -> None:
    tokens = setup["tokens"]
    _, cache = setup["model"].run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=2)
    keep = ~torch.isin(tokens, torch.tensor(SPECIAL_IDS))
    x = cache[HOOK][keep].double()
    for i, sae in enumerate(setup["saes"]):
        with torch.no_grad():
            x_hat = sae.decode(sae.encode(x.float())).double()
        err = (x - x_hat).pow(2).sum(-1).mean()
        fvu = err / (x - x.mean(0)).pow(2).sum(-1).mean()
        saebench = 1 - err / (x.pow(2).sum(-1).mean() - x.pow(2).mean() ** 2)
        assert ours[f"sae{i}"]["fvu"] == pytest.approx(float(fvu), rel=1e-6)
        assert ours[f"sae{i}"]["explained_variance"] == pytest.approx(1 - float(fvu), rel=1e-6)
        assert ours[f"sae{i}"]["explained_variance_saebench"] == pytest.approx(float(saebench), rel=1e-6)


def test_scores_are_not_degenerate(ours: dict) -> None:
    """Guard against an agreement that holds only because both sides are trivial."""
    for values in ours.values():
        assert values["ce_loss_zero_ablation"] - values["ce_loss_clean"] > 0.05
        assert values["kl_div_zero_ablation"] > 0.05
        assert 0 < values["l0"] < 64
