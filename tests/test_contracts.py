"""Contract suites parametrized over the registries themselves: a new metric, variant or loader is tested here
without anyone asking.

- every metric × every variant test factory: it runs, emits exactly the names it declares (metrics.base.check_emitted)
  and its per-latent values index latents of this SAE;
- every SAE variant: its alignment slope and norm exponent come from the variant (one value per latent, finite);
- every loader format: it reads back an example saved in that format;
- every autointerp scorer × every judge: it scores the planted latents (status ok) and its declared metrics reach
  the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.llm_server import LLMServer
from helpers.planted_autointerp import decode, planted_examples
from helpers.scripted_llm import llm_config, scripted_llm

from autointerp.config import AutointerpConfig
from autointerp.judges import JUDGES
from autointerp.pipeline import config_for_mode, run_autointerp
from autointerp.scorers import SCORERS
from autointerp.status import Status
from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from evalkit.sae.factory import make_sae, variant_factories, write_dictionary_learning, write_sparsify
from evalkit.sae.loaders.formats import FORMATS, load_saes
from evalkit.sae.score import alignment_slopes, norm_exponents
from metrics.base import METRICS, MetricSpec, check_emitted, load_metric_modules
from metrics.downstream import EXTRA_KEYS

load_metric_modules()
D_IN, D_SAE, N_TOKENS = 16, 32, 96
LABELS = ("even", "small")
VARIANTS = list(variant_factories())
METRIC_SPECS = [spec for _, spec in METRICS.items()]


def _acts(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N_TOKENS, D_IN, generator=gen) * (1 + torch.rand(N_TOKENS, 1, generator=gen) * 3)


def _context(x_TD: torch.Tensor) -> EvalContext:
    norms_T = x_TD.norm(dim=-1).double()
    q25, q50, q75 = (float(norms_T.quantile(q)) for q in (0.25, 0.5, 0.75))
    return EvalContext(median_norm=q50, norm_q25=q25, norm_q75=q75, n_tokens=N_TOKENS, label_names=LABELS, seed=0)


def _batch(sae: Any, x_TD: torch.Tensor) -> SaeBatch:
    """One SAE on one batch with everything a metric may require (tokens, labels, downstream extras)."""
    with torch.no_grad():
        f_TF = sae.encode(x_TD)
        x_hat_TD = sae.decode(f_TF)
    tokens_T = torch.arange(N_TOKENS) % 11
    labels_TL = torch.stack([tokens_T % 2 == 0, tokens_T < 4], dim=1).float()
    gen = torch.Generator().manual_seed(1)
    extras = {key: torch.rand(N_TOKENS, generator=gen) + 1.0 for key in EXTRA_KEYS}
    return SaeBatch(
        sae=sae,
        x_TD=x_TD,
        x_hat_TD=x_hat_TD,
        f_TF=f_TF,
        positions_T=torch.arange(N_TOKENS) % 24,
        tokens_T=tokens_T,
        labels_TL=labels_TL,
        extras=extras,
    )


def _run(spec: MetricSpec, variant: str) -> list[MetricValue]:
    sae = make_sae(variant, D_IN, D_SAE, seed=0)
    x_TD = _acts()
    ctx = _context(x_TD)
    if spec.kind == "weights":
        with torch.no_grad():
            return list(spec.factory(sae, ctx))
    if spec.kind == "group":
        saes = {"a": sae, "b": make_sae(variant, D_IN, D_SAE, seed=1)}
        with torch.no_grad():
            return list(spec.factory(saes, ctx)["a"])
    acc = spec.factory(sae, ctx)
    for half in (x_TD[: N_TOKENS // 2], x_TD[N_TOKENS // 2 :]):
        batch = _batch(sae, half)
        batch.tokens_T, batch.positions_T = batch.tokens_T[: len(half)], batch.positions_T[: len(half)]
        batch.labels_TL = batch.labels_TL[: len(half)]  # type: ignore[index]
        batch.extras = {k: v[: len(half)] for k, v in batch.extras.items()}
        acc.update(batch)
    return list(acc.compute())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("spec", METRIC_SPECS, ids=lambda s: s.name)
def test_every_metric_runs_on_every_variant_and_emits_what_it_declares(spec: MetricSpec, variant: str) -> None:
    values = _run(spec, variant)
    check_emitted(spec, values, D_SAE)
    assert all(isinstance(v.value, float) for v in values)


def test_check_emitted_catches_an_undeclared_or_missing_name() -> None:
    """The contract check can fail: a stray name, a missing one, a latent out of range."""
    spec = METRICS.get("reconstruction")
    good = [MetricValue(n, 0.0) for n in spec.produces]
    check_emitted(spec, good, D_SAE)
    with pytest.raises(RuntimeError, match="undeclared SAE-level value 'typo'"):
        check_emitted(spec, [*good, MetricValue("typo", 0.0)], D_SAE)
    with pytest.raises(RuntimeError, match="missing"):
        check_emitted(spec, good[1:], D_SAE)
    density = METRICS.get("feature_density")
    level = [MetricValue(n, 0.0) for n in density.produces]
    with pytest.raises(RuntimeError, match="outside"):
        check_emitted(density, [*level, MetricValue("feature_density", 0.5, latent=D_SAE)], D_SAE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_states_its_alignment_slope_and_norm_exponent(variant: str) -> None:
    sae = make_sae(variant, D_IN, D_SAE)
    alpha_F = alignment_slopes(sae, 2.0)
    a_F = norm_exponents(sae)
    assert alpha_F.shape == a_F.shape == (D_SAE,)
    assert torch.isfinite(alpha_F).all() and torch.isfinite(a_F).all()


def _save_saelens(folder: Path) -> None:
    make_sae("topk", D_IN, D_SAE).save_model(folder)


def _save_dictionary_learning(folder: Path) -> None:
    from evalkit.sae.factory import dl_relu_state

    write_dictionary_learning(folder, "StandardTrainer", dl_relu_state(make_sae("standard", D_IN, D_SAE)), D_IN, D_SAE)


def _save_sparsify(folder: Path) -> None:
    write_sparsify(folder, "layers.3", make_sae("topk", D_IN, D_SAE))


SAVED_EXAMPLES = {
    "sae-lens": _save_saelens,
    "dictionary_learning": _save_dictionary_learning,
    "sparsify": _save_sparsify,
}
"""format name -> a writer of one example SAE in that format. A format registered without one fails below."""


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_loader_reads_a_saved_example(fmt: str, tmp_path: Path) -> None:
    assert fmt in SAVED_EXAMPLES, f"loader format {fmt!r} has no saved example in tests/test_contracts.py"
    SAVED_EXAMPLES[fmt](tmp_path / "example")
    (loaded,) = load_saes(tmp_path / "example", format=fmt)
    assert (loaded.d_in, loaded.d_sae, loaded.format) == (D_IN, D_SAE, fmt)
    x_TD = _acts()
    with torch.no_grad():
        assert loaded.sae.decode(loaded.sae.encode(x_TD)).shape == x_TD.shape


@pytest.fixture(scope="module")
def planted() -> dict[int, Any]:
    return planted_examples(AutointerpConfig())


@pytest.mark.parametrize("judge", list(JUDGES))
@pytest.mark.parametrize("scorer", list(SCORERS))
def test_every_scorer_runs_with_every_judge(scorer: str, judge: str, planted: dict[int, Any], tmp_path: Path) -> None:
    settings: dict[str, Any] = {"scorers": (scorer,), "judge": judge, "shuffled_control": False, "latents": (0, 1)}
    if judge == "llm":
        with LLMServer(scripted_llm) as srv:
            result = run_autointerp(planted, decode, llm_config(srv.base_url, **settings), tmp_path)
    else:
        config = config_for_mode("baseline", **settings)
        assert config is not None
        result = run_autointerp(planted, decode, config, tmp_path)
    rows = [r for r in result.rows if r.scorer == scorer]
    assert [r.latent for r in rows] == [0, 1]
    assert all(r.status is Status.OK and r.score is not None for r in rows), rows
    emitted = {m.metric for m in result.metrics}
    assert {metric for _, metric in SCORERS.get(scorer).produces} <= emitted
