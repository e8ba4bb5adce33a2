"""How often the data is read and the model run: weights metrics take their norm statistics from the evaluation
pass (no pre-pass), a model source's pre-pass batches are replayed, the zero ablation from a residual hook runs one
sequence per batch — each with results equal to the earlier way of computing them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.run_support import HOOK, handles, model_source, tiny_saes, tiny_tokens, trained_tiny_model
from test_run_runner import CountingSource, three_saes

import evalkit.engine.passes as passes
from evalkit.engine.runconfig import DataSource, EvalSettings
from evalkit.engine.runner import Runner, RunOutcome
from evalkit.engine.splice import PatchScorer, Splicer
from evalkit.engine.store import ResultStore
from metrics.base import select_metrics


def all_values(outcome: RunOutcome) -> dict[tuple[str, str, int | None], float]:
    return {
        (r.handle.sae_id, v.metric, v.latent): v.value for r in outcome.results for sh in r.shards for v in sh.values
    }


def alignment_values(outcome: RunOutcome) -> dict[tuple[str, str, int | None], float]:
    return {k: v for k, v in all_values(outcome).items() if k[1].startswith("alignment")}


@pytest.mark.parametrize("selection", ["core,alignment", "alignment"])
def test_weights_metrics_take_norms_from_the_pass(tmp_path: Path, selection: str) -> None:
    """alignment needs the median norm after the pass only: one read of the data (with stream metrics, their
    pass; alone, one norm read), and the values a pre-pass would give."""
    src = CountingSource()
    outcome = Runner(ResultStore(tmp_path / "a"), EvalSettings(), select_metrics(selection)).run(
        three_saes(), {"h": src.source(known=True)}
    )
    assert src.passes == 1
    forced = CountingSource()  # norm (a stream metric reading norms while it streams) forces the pre-pass
    reference = Runner(ResultStore(tmp_path / "b"), EvalSettings(), select_metrics("alignment,norm")).run(
        three_saes(), {"h": forced.source(known=True)}
    )
    assert forced.passes == 2
    assert outcome.hooks["h"].ctx == reference.hooks["h"].ctx
    assert alignment_values(outcome) == alignment_values(reference) != {}


class CountingModelSource:
    """The tiny model's hook activations; counts how often the model is asked for the batches."""

    def __init__(self) -> None:
        self.inner = model_source(trained_tiny_model(), tiny_tokens(n_seq=12), batch_size=4)
        self.opened = 0

    def batches(self) -> Iterator:
        self.opened += 1
        yield from self.inner.open_batches()

    def source(self) -> DataSource:
        return DataSource(
            self.batches, self.inner.description, model=self.inner.model, hook_name=HOOK, fingerprint="tiny-model"
        )


def test_prepass_batches_are_replayed_with_the_same_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    selection = "core,sparsity,downstream,norm,afa"
    replayed = CountingModelSource()
    saes = handles(tiny_saes())
    settings = EvalSettings(batch_size=4 * 16)
    got = Runner(ResultStore(tmp_path / "a"), settings, select_metrics(selection)).run(saes, {HOOK: replayed.source()})
    assert replayed.opened == 1  # the model ran to the hook once: the evaluation pass replayed the pre-pass's batches
    monkeypatch.setattr(passes, "REPLAY_BYTES", 0)
    rerun = CountingModelSource()
    want = Runner(ResultStore(tmp_path / "b"), settings, select_metrics(selection)).run(saes, {HOOK: rerun.source()})
    assert rerun.opened == 2
    assert all_values(got) == all_values(want)
    assert any(k[1] == "norm_auroc" for k in all_values(got)) and any(k[1] == "ce_loss_score" for k in all_values(got))


@pytest.mark.parametrize("hook", [HOOK, "blocks.0.hook_mlp_out"])
def test_zero_ablation_runs_one_sequence_from_a_residual_hook(hook: str) -> None:
    model = trained_tiny_model()
    tokens_BS = tiny_tokens(n_seq=5)
    _, cache = model.run_with_cache(tokens_BS, names_filter=[hook])
    acts_BSD = cache[hook]
    keep_BS = tokens_BS > 1
    splicer = Splicer(model, hook)
    scorer = PatchScorer(splicer.logits(tokens_BS, acts_BSD), tokens_BS, keep_BS)
    full_BSV = splicer.logits(tokens_BS, torch.zeros_like(acts_BSD))
    want_ce, want_kl = scorer.ce_kl(full_BSV)
    zero = splicer.zero_ablated_logits(tokens_BS, acts_BSD)
    assert splicer.zero_rows_shared == (hook == HOOK)
    if splicer.zero_rows_shared:
        assert zero.shape == full_BSV.shape[1:]
        torch.testing.assert_close(zero.expand_as(full_BSV), full_BSV, atol=1e-5, rtol=1e-5)
        got_ce, got_kl = scorer.ce_kl_same_rows(zero)
    else:  # an MLP output zeroed leaves the residual stream, and so the tokens, in play: the whole batch runs
        assert not torch.allclose(full_BSV[0], full_BSV[1])
        torch.testing.assert_close(zero, full_BSV)
        got_ce, got_kl = scorer.ce_kl(zero)
    torch.testing.assert_close(got_ce, want_ce, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(got_kl, want_kl, atol=1e-5, rtol=1e-5)


def test_chunked_ce_kl_equals_the_whole_batch_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer works ROW_CHUNK tokens at a time; each token's CE and KL equal the whole-batch formula's."""
    import evalkit.engine.splice as splice

    gen = torch.Generator().manual_seed(0)
    tokens_BS = torch.randint(0, 50, (3, 7), generator=gen)
    clean_BSV, patched_BSV = torch.randn(3, 7, 50, generator=gen) * 3, torch.randn(3, 7, 50, generator=gen) * 3
    keep_BS = torch.rand(3, 7, generator=gen) > 0.3
    clean_TV = torch.log_softmax(clean_BSV[keep_BS], dim=-1)
    patched_TV = torch.log_softmax(patched_BSV[keep_BS], dim=-1)
    next_BS = torch.cat([tokens_BS[:, 1:], torch.full((3, 1), -1)], dim=1)[keep_BS]
    want_ce = torch.where(next_BS >= 0, -patched_TV.gather(-1, next_BS.clamp_min(0)[:, None])[:, 0], torch.nan)
    want_kl = (clean_TV.exp() * (clean_TV - patched_TV)).sum(-1)
    monkeypatch.setattr(splice, "ROW_CHUNK", 4)
    got_ce, got_kl = PatchScorer(clean_BSV, tokens_BS, keep_BS).ce_kl(patched_BSV)
    torch.testing.assert_close(got_ce, want_ce, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(got_kl, want_kl, atol=1e-7, rtol=1e-6)


def test_a_fully_stored_rerun_reads_no_data(tmp_path: Path) -> None:
    """norm needs the pre-pass; a rerun whose stream results are all stored skips it (the norms come from the store)
    and gives the same context and values; one SAE still to compute brings the pre-pass and its pass back."""
    saes, selection = three_saes(), select_metrics("core,norm,alignment,stability")
    first_src = CountingSource()
    first = Runner(ResultStore(tmp_path), EvalSettings(), selection).run(saes[:2], {"h": first_src.source(known=True)})
    assert first_src.passes == 2
    again = CountingSource()
    rerun = Runner(ResultStore(tmp_path), EvalSettings(), selection).run(saes[:2], {"h": again.source(known=True)})
    assert again.passes == 0
    assert rerun.hooks["h"].ctx == first.hooks["h"].ctx and rerun.hooks["h"].n_tokens_read > 0
    assert all_values(rerun) == all_values(first) and not rerun.computed
    grown = CountingSource()
    Runner(ResultStore(tmp_path), EvalSettings(), selection).run(saes, {"h": grown.source(known=True)})
    assert grown.passes == 2
