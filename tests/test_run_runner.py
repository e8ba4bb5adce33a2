"""Runner mechanics: one pass for all SAEs, weights/group metrics, skip reasons, observers, cache reuse."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from evalkit.core.batch import ActivationBatch
from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeHandle, handle_from_sae
from evalkit.engine.runner import Runner
from evalkit.engine.store import ResultStore
from evalkit.engine.stream_pass import SEQ_INDEX_KEY
from metrics.base import MetricSpec, load_metric_modules, select_metrics

D_IN, N_SEQ, SEQ = 8, 6, 5


class CountingSource:
    """Random activations with a BOS per sequence; counts how often the data is read."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.acts = torch.randn(N_SEQ, SEQ, D_IN, generator=gen)
        self.passes = 0

    def batches(self) -> Iterator[ActivationBatch]:
        self.passes += 1
        special = torch.zeros(N_SEQ, SEQ, dtype=torch.bool)
        special[:, 0] = True
        positions = torch.arange(SEQ).expand(N_SEQ, SEQ).clone()
        for i in range(0, N_SEQ, 2):
            yield ActivationBatch(self.acts[i : i + 2], positions[i : i + 2], special[i : i + 2])

    def source(self, known: bool = False) -> DataSource:
        if known:  # the source vouches for its data's identity, as evalkit.sources do
            return DataSource(
                self.batches,
                {"kind": "counting"},
                hook_name="h",
                fingerprint="counting-v1",
                has_tokens=False,
                label_names=(),
            )
        return DataSource(self.batches, {"kind": "counting"}, hook_name="h")


def three_saes() -> list[SaeHandle]:
    torch.manual_seed(1)
    meta = SAEMetadata(hook_name="h")
    saes = [StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=16, metadata=meta)) for _ in range(3)]
    handles = [handle_from_sae(s, f"s{i}") for i, s in enumerate(saes)]
    # s0 and s1 are "seeds" of one config; s2 stands alone.
    return [
        replace(handles[0], config_without_seed_hash="g"),
        replace(handles[1], config_without_seed_hash="g"),
        replace(handles[2], config_without_seed_hash="solo"),
    ]


class Calls:
    weights = 0
    group: list[tuple[str, ...]] = []


def norm_of_decoder(sae: StandardSAE, ctx: EvalContext) -> list[MetricValue]:
    Calls.weights += 1
    return [MetricValue("dec_norm", float(sae.W_dec.norm()))]


def group_size(saes: dict[str, StandardSAE], ctx: EvalContext) -> dict[str, list[MetricValue]]:
    Calls.group.append(tuple(sorted(saes)))
    return {sid: [MetricValue("group_size", float(len(saes)))] for sid in saes}


WEIGHTS = MetricSpec("t_weights", "alignment", "weights", norm_of_decoder, ("dec_norm",))
GROUP = MetricSpec("t_group", "stability", "group", group_size, ("group_size",), requires=frozenset({"seed_group"}))


class Recorder:
    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.seen: dict[str, list[torch.Tensor]] = {}

    def wants(self, sae_id: str) -> bool:
        return sae_id in self.wanted

    def observe(self, sae_id: str, batch: SaeBatch) -> None:
        self.seen.setdefault(sae_id, []).append(batch.extras[SEQ_INDEX_KEY])


def run(tmp: Path, specs: list[MetricSpec], src: CountingSource, observers: list[Recorder] = ()):  # type: ignore[assignment]
    return Runner(ResultStore(tmp), EvalSettings(), specs, observers).run(three_saes(), {"h": src.source()})


def test_one_pass_serves_every_sae_and_metric(tmp_path: Path) -> None:
    load_metric_modules()
    src = CountingSource()
    outcome = run(tmp_path, select_metrics("core,sparsity,downstream"), src)
    # the norm pre-pass and one evaluation pass, for 3 SAEs × 5 stream entries (saebench_weights only when named)
    assert src.passes == 2
    assert outcome.hooks["h"].ctx.n_tokens == N_SEQ * (SEQ - 1)
    skipped = {n.entry: n for n in outcome.skipped}
    assert "needs the model" in skipped["downstream"].reason
    assert skipped["downstream"].sae_ids == ["s0", "s1", "s2"]
    src_again = CountingSource()
    rerun = run(tmp_path, select_metrics("core,sparsity,downstream"), src_again)
    assert rerun.computed == [] and len(rerun.reused) == 3 * 5
    assert src_again.passes == 1  # only the pre-pass (it fingerprints the data); no evaluation pass


def test_weights_and_group_metrics_cached(tmp_path: Path) -> None:
    Calls.weights, Calls.group = 0, []
    outcome = run(tmp_path, [WEIGHTS, GROUP], CountingSource())
    assert Calls.weights == 3
    assert Calls.group == [("s0", "s1")]
    values = {r.handle.sae_id: {v.metric: v.value for sh in r.shards for v in sh.values} for r in outcome.results}
    assert values["s0"]["group_size"] == 2 and "group_size" not in values["s2"]
    assert [n.sae_ids for n in outcome.skipped if n.entry == "t_group"] == [["s2"]]
    run(tmp_path, [WEIGHTS, GROUP], CountingSource())
    assert Calls.weights == 3 and len(Calls.group) == 1  # all reused


def test_observer_sees_every_kept_token_with_its_sequence(tmp_path: Path) -> None:
    load_metric_modules()
    recorder = Recorder({"s1"})
    run(tmp_path, select_metrics("l0"), CountingSource(), [recorder])
    seq_T = torch.cat(recorder.seen["s1"])
    assert seq_T.tolist() == [s for s in range(N_SEQ) for _ in range(SEQ - 1)]
    # cached metrics do not stop an observer from getting its batches
    again = Recorder({"s2"})
    run(tmp_path, select_metrics("l0"), CountingSource(), [again])
    assert torch.cat(again.seen["s2"]).numel() == N_SEQ * (SEQ - 1)


def test_no_prepass_when_nothing_needs_norms(tmp_path: Path) -> None:
    load_metric_modules()
    specs = select_metrics("core,sparsity")
    src = CountingSource()
    outcome = Runner(ResultStore(tmp_path), EvalSettings(), specs).run(three_saes(), {"h": src.source(known=True)})
    assert src.passes == 1
    assert outcome.hooks["h"].ctx.n_tokens == N_SEQ * (SEQ - 1)
    assert {sh.n_tokens for r in outcome.results for sh in r.shards} == {N_SEQ * (SEQ - 1)}
    x = src.acts[:, 1:].reshape(-1, D_IN).double()
    assert outcome.hooks["h"].ctx.median_norm == pytest.approx(float(np.median(x.norm(dim=-1).numpy())))
    again = CountingSource()
    rerun = Runner(ResultStore(tmp_path), EvalSettings(), specs).run(three_saes(), {"h": again.source(known=True)})
    assert again.passes == 0 and rerun.computed == []
    assert rerun.hooks["h"].ctx.n_tokens == N_SEQ * (SEQ - 1)


def test_explicit_seed_groups_by_path_or_id(tmp_path: Path) -> None:
    from evalkit.core.errors import EvalkitInputError
    from evalkit.engine.runconfig import seed_groups

    saes = [replace(h, path=str(tmp_path / h.sae_id)) for h in three_saes()]
    groups = seed_groups(saes, [[str(tmp_path / "s0"), "s2"]])
    assert [[s.sae_id for s in g] for g in groups] == [["s0", "s2"]]
    assert [[s.sae_id for s in g] for g in seed_groups(saes)] == [["s0", "s1"]]
    with pytest.raises(EvalkitInputError, match="nope"):
        seed_groups(saes, [["s0", "nope"]])


SIDE_THREADS: list[str] = []


def decoder_norm_and_thread(sae: StandardSAE, ctx: EvalContext) -> list[MetricValue]:
    SIDE_THREADS.append(threading.current_thread().name)
    return [MetricValue("dec_norm", float(sae.W_dec.norm()))]


SIDE = MetricSpec("t_side", "alignment", "weights", decoder_norm_and_thread, ("dec_norm",))


def test_weights_metrics_run_beside_the_pass_with_the_same_values(tmp_path: Path) -> None:
    from metrics.norm import norm_dependence_metric

    load_metric_modules()
    SIDE_THREADS.clear()
    # `norm` streams with the norm statistics: a pre-pass fixes the data, so the weights metrics run beside the pass
    outcome = run(tmp_path / "a", [*select_metrics("norm"), SIDE], CountingSource())
    assert SIDE_THREADS == ["evalkit-weights_0"] * 3
    for r in outcome.results:
        values = {(v.metric, v.latent): v.value for sh in r.shards for v in sh.values}
        assert values[("dec_norm", None)] == float(r.handle.sae.W_dec.detach().norm())
        direct = norm_dependence_metric(r.handle.sae, outcome.hooks["h"].ctx)
        assert {(v.metric, v.latent): v.value for v in direct} == {
            k: v for k, v in values.items() if k[0].startswith("norm_dependence")
        }
    # weights metrics alone (no pass to run beside): in the finish phase, on the caller's thread
    SIDE_THREADS.clear()
    run(tmp_path / "b", [SIDE], CountingSource())
    assert SIDE_THREADS == [threading.current_thread().name] * 3
