"""Contract of the stream-accumulator state protocol (metrics.base.StreamingMetric), over the registry itself.

Every registered stream metric × every test SAE variant, without naming either:
- accumulate two halves of a stream and merge (in either order, or into a fresh accumulator) = accumulate the
  whole: counts exact, floats to 1e-6 relative, per-token samples identical;
- state_dict → save (torch weights_only, or safetensors via pack_state) → fresh accumulator → load_state_dict →
  continue = never stopping, exactly;
- state_dict holds only tensors and plain numbers, and is a snapshot (later updates do not change it).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from evalkit.core.records import EvalContext, SaeBatch, token_key
from evalkit.sae.factory import make_sae, variant_factories
from metrics.afa import TokenReservoir
from metrics.base import METRICS, MetricSpec, load_metric_modules, pack_state, unpack_state
from metrics.downstream import EXTRA_KEYS  # the runner's per-token extras (a data contract, not a metric)

load_metric_modules()
SAMPLER_CAPS = ("metrics.afa.SAMPLE_TOKENS", "metrics.probing.MAX_PER_CLASS")
"""Capacities of the seeded samplers in metrics (a new sampler adds its cap here to be tested evicting)."""
STREAM_METRICS = [spec for _, spec in METRICS.items() if spec.kind == "stream"]
VARIANTS = list(variant_factories())
D_IN, D_SAE, SEQ_LEN, SEQ_PER_BATCH, N_BATCHES = 8, 16, 12, 2, 6
LABEL_NAMES = ("even_latent", "random")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def make_batches(sae: Any, seed: int = 0) -> tuple[list[SaeBatch], EvalContext]:
    """A planted stream: BOS-like outlier tokens at position 0, labels tied to latent firing, downstream extras
    with a NaN at each sequence's last position, stable token keys."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(N_BATCHES):
        x_BSD = torch.randn(SEQ_PER_BATCH, SEQ_LEN, D_IN, generator=gen) * (1 + torch.rand(SEQ_PER_BATCH, SEQ_LEN, 1))
        x_BSD[:, 0] *= 30.0  # massive first-position tokens: outliers and sink candidates
        keep_BS = torch.rand(SEQ_PER_BATCH, SEQ_LEN, generator=gen) > 0.1
        seq_BS = torch.arange(b * SEQ_PER_BATCH, (b + 1) * SEQ_PER_BATCH)[:, None].expand(-1, SEQ_LEN)
        pos_BS = torch.arange(SEQ_LEN)[None, :].expand(SEQ_PER_BATCH, -1)
        x_TD = x_BSD[keep_BS]
        with torch.no_grad():
            f_TF = sae.encode(x_TD).float()
            x_hat_TD = sae.decode(f_TF).float()
        n = x_TD.shape[0]
        labels_TL = torch.stack([f_TF[:, 0] != 0, torch.rand(n, generator=gen) < 0.4], dim=1)
        extras = {key: torch.rand(n, generator=gen, dtype=torch.float64) * 3 for key in EXTRA_KEYS}
        last_T = pos_BS[keep_BS] == SEQ_LEN - 1
        for key in EXTRA_KEYS:
            extras[key][last_T] = math.nan
        seq_T, pos_T = seq_BS[keep_BS], pos_BS[keep_BS]
        extras["seq_index"] = seq_T
        batches.append(
            SaeBatch(
                sae=sae,
                x_TD=x_TD,
                x_hat_TD=x_hat_TD,
                f_TF=f_TF,
                positions_T=pos_T,
                tokens_T=torch.randint(0, 50, (n,), generator=gen),
                labels_TL=labels_TL,
                extras=extras,
                token_keys_T=token_key(seq_T, pos_T),
            )
        )
    norms_N = torch.cat([b.x_TD.norm(dim=-1) for b in batches]).double()
    q25, q50, q75 = (float(q) for q in norms_N.quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)))
    ctx = EvalContext(q50, q25, q75, int(norms_N.numel()), LABEL_NAMES, seed=7)
    return batches, ctx


def fed(spec: MetricSpec, sae: Any, ctx: EvalContext, batches: list[SaeBatch]) -> Any:
    acc = spec.factory(sae, ctx)
    for batch in batches:
        acc.update(batch)
    return acc


def outcome(acc: Any) -> tuple[dict[tuple[str, int | None], float], Any]:
    values = {(v.metric, v.latent): v.value for v in acc.compute()}
    return values, acc.samples() if hasattr(acc, "samples") else None


def assert_same(got: Any, want: Any, exact: bool = False) -> None:
    got_values, got_samples = outcome(got)
    want_values, want_samples = outcome(want)
    assert got_values.keys() == want_values.keys()
    for key, expected in want_values.items():
        if exact or float(expected).is_integer():  # counts (and checkpoint continuations) are exact
            assert got_values[key] == expected, key
        else:
            assert got_values[key] == pytest.approx(expected, rel=1e-6, abs=1e-12), key
    assert got_samples == want_samples  # sampled artefacts identical given the seed


def case_id(spec: MetricSpec) -> str:
    return spec.name


@pytest.fixture(scope="module", params=VARIANTS)
def stream(request: pytest.FixtureRequest) -> tuple[Any, list[SaeBatch], EvalContext]:
    sae = make_sae(request.param, D_IN, D_SAE, seed=1)
    batches, ctx = make_batches(sae)
    return sae, batches, ctx


def test_the_registry_has_stream_metrics() -> None:
    assert len(STREAM_METRICS) >= 8  # reconstruction … probing: a broken import would shrink this silently


@pytest.mark.parametrize("spec", STREAM_METRICS, ids=case_id)
def test_merge_of_two_halves_equals_the_whole(
    spec: MetricSpec, stream: tuple[Any, list[SaeBatch], EvalContext]
) -> None:
    sae, batches, ctx = stream
    whole = fed(spec, sae, ctx, batches)
    cut = N_BATCHES // 2
    first, second = fed(spec, sae, ctx, batches[:cut]), fed(spec, sae, ctx, batches[cut:])
    in_order = fed(spec, sae, ctx, batches[:cut])
    in_order.merge(second)
    assert_same(in_order, whole)
    reverse = fed(spec, sae, ctx, batches[cut:])
    reverse.merge(first)  # the driver merges shards in whatever order they come back
    assert_same(reverse, whole)
    fresh = spec.factory(sae, ctx)
    fresh.merge(first)
    fresh.merge(second)
    fresh.merge(spec.factory(sae, ctx))  # merging an accumulator that saw nothing changes nothing
    assert_same(fresh, whole)


def saved_and_loaded(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save / torch.load(weights_only=True); and the same through safetensors (pack_state)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    tensors, kinds = pack_state(state)
    via_safetensors = unpack_state(load(save(tensors, metadata=kinds)), kinds)
    assert via_safetensors.keys() == loaded.keys()
    for key, value in loaded.items():
        other = via_safetensors[key]
        if isinstance(value, torch.Tensor):
            assert isinstance(other, torch.Tensor) and torch.equal(other, value), key
        else:
            assert type(other) is type(value) and other == value, key
    return loaded


@pytest.mark.parametrize("spec", STREAM_METRICS, ids=case_id)
def test_state_roundtrip_then_continue_equals_never_stopping(
    spec: MetricSpec, stream: tuple[Any, list[SaeBatch], EvalContext]
) -> None:
    sae, batches, ctx = stream
    whole = fed(spec, sae, ctx, batches)
    cut = N_BATCHES // 2 + 1
    stopped = fed(spec, sae, ctx, batches[:cut])
    state = stopped.state_dict()
    assert all(isinstance(v, torch.Tensor | int | float | bool) for v in state.values())
    resumed = spec.factory(sae, ctx)
    resumed.load_state_dict(saved_and_loaded(state))
    for batch in batches[cut:]:
        resumed.update(batch)
    assert_same(resumed, whole, exact=True)
    # The state was a snapshot: continuing `stopped` did not change it.
    for batch in batches[cut:]:
        stopped.update(batch)
    again = spec.factory(sae, ctx)
    again.load_state_dict(state)
    assert_same(again, fed(spec, sae, ctx, batches[:cut]), exact=True)


# The samplers themselves, with capacities small enough that they evict (the stream above fits in them whole).


def test_token_reservoir_merges_to_the_whole_stream_sample() -> None:
    keys_N = torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:3000] * 7
    rows_NC = torch.randn(3000, 2, dtype=torch.float64)
    whole = TokenReservoir(100, 2, seed=3)
    for keys, rows in zip(keys_N.split(256), rows_NC.split(256), strict=True):
        whole.add(rows, keys)
    parts = [TokenReservoir(100, 2, seed=3) for _ in range(3)]
    for j, (keys, rows) in enumerate(zip(keys_N.split(1000), rows_NC.split(1000), strict=True)):
        parts[j].add(rows, keys)
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    assert torch.equal(parts[2].rows(), whole.rows()) and parts[2].seen == whole.seen == 3000
    assert whole.rows().shape == (100, 2)
    other_seed = TokenReservoir(100, 2, seed=4)
    other_seed.add(rows_NC, keys_N)
    assert not torch.equal(other_seed.rows(), whole.rows())


@pytest.mark.parametrize("spec", STREAM_METRICS, ids=case_id)
def test_merge_with_evicting_samplers(spec: MetricSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stream metric again, with every sampler capacity of the metrics package shrunk below the stream."""
    for dotted_name in SAMPLER_CAPS:
        monkeypatch.setattr(dotted_name, 12)
    sae = make_sae(VARIANTS[0], D_IN, D_SAE, seed=2)
    batches, ctx = make_batches(sae, seed=5)
    whole = fed(spec, sae, ctx, batches)
    first, second = fed(spec, sae, ctx, batches[:2]), fed(spec, sae, ctx, batches[2:])
    second.merge(first)
    assert_same(second, whole)


@pytest.mark.parametrize("spec", [s for s in STREAM_METRICS if hasattr(s.factory, "compute_named")], ids=case_id)
def test_compute_named_gives_the_same_values_as_compute(
    spec: MetricSpec, stream: tuple[Any, list[SaeBatch], EvalContext]
) -> None:
    """The jackknife's shortcut (metrics.base: `compute_named`) returns exactly compute()'s SAE-level values for
    the names asked, and nothing else — for the names that get a stderr and for every SAE-level name."""
    sae, batches, ctx = stream
    acc = fed(spec, sae, ctx, batches)
    full = {v.metric: v.value for v in acc.compute() if v.latent is None}
    for names in (frozenset(spec.stderr_names), frozenset(spec.produces)):
        got = {v.metric: v.value for v in acc.compute_named(names)}
        assert got == {k: v for k, v in full.items() if k in names}
