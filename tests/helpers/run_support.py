"""Shared builders for the runner tests: a tiny HookedTransformer, a source over it, hand-built sae-lens SAEs.

(Named test_run_* to stay inside the runner's test files; it holds no tests itself.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAE, SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from evalkit.core.batch import ActivationBatch
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeHandle, handle_from_sae
from evalkit.engine.runner import Runner, RunOutcome
from evalkit.engine.store import ResultStore
from metrics.base import load_metric_modules, select_metrics

HOOK = "blocks.1.hook_resid_pre"
SPECIAL_IDS = (0, 1)  # 0 = BOS, 1 = PAD in the tests' token streams
D_MODEL, D_VOCAB, SEQ = 32, 50, 16


def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=D_VOCAB,
        n_ctx=SEQ,
        act_fn="relu",
        normalization_type="LN",
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def tiny_tokens(n_seq: int = 12, seed: int = 1, pad: bool = True) -> torch.Tensor:
    """A learnable stream (next = 3·prev + 1 mod 48, 20% noise) with BOS first and a few PAD tails."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n_seq, SEQ, dtype=torch.long)
    tokens[:, 1] = torch.randint(2, D_VOCAB, (n_seq,), generator=gen)
    for t in range(2, SEQ):
        rule = (3 * (tokens[:, t - 1] - 2) + 1) % (D_VOCAB - 2) + 2
        noise = torch.randint(2, D_VOCAB, (n_seq,), generator=gen)
        tokens[:, t] = torch.where(torch.rand(n_seq, generator=gen) < 0.2, noise, rule)
    if pad:
        tokens[::3, -3:] = 1
    return tokens


@functools.lru_cache(maxsize=1)
def trained_tiny_model(steps: int = 20) -> HookedTransformer:
    """The tiny model after a few seconds of training, so CE/KL against zero ablation mean something."""
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = tiny_tokens(n_seq=256, seed=99, pad=False)
    for step in range(steps):
        batch = data[(step * 16) % 256 : (step * 16) % 256 + 16]
        loss = model(batch, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def model_source(model: HookedTransformer, tokens: torch.Tensor, batch_size: int, hook: str = HOOK) -> DataSource:
    layer = int(hook.split(".")[1])

    def batches() -> Iterator[ActivationBatch]:
        for i in range(0, tokens.shape[0], batch_size):
            t_BS = tokens[i : i + batch_size]
            _, cache = model.run_with_cache(t_BS, names_filter=[hook], stop_at_layer=layer + 1)
            special_BS = torch.isin(t_BS, torch.tensor(SPECIAL_IDS))
            positions_BS = torch.arange(t_BS.shape[1]).expand_as(t_BS).clone()
            yield ActivationBatch(cache[hook].float(), positions_BS, special_BS, t_BS)

    return DataSource(batches, {"kind": "test-model", "hook": hook}, model=model, hook_name=hook)


def tiny_saes(hook: str = HOOK, d_sae: int = 64) -> list[SAE]:
    torch.manual_seed(3)
    meta = SAEMetadata(hook_name=hook, model_name="tiny")
    standard = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=d_sae, metadata=meta))
    topk = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=d_sae, k=6, metadata=meta))
    for sae in (
        standard,
        topk,
    ):  # a tied init reconstructs far better than sae-lens' default, so scores are sensible
        with torch.no_grad():
            sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.norm(dim=0, keepdim=True).T * 0.6)
    return [standard, topk]


def run_specs(
    saes: Sequence[SaeHandle],
    source: DataSource,
    selection: str,
    out: Path,
    settings: EvalSettings | None = None,
) -> RunOutcome:
    load_metric_modules()
    runner = Runner(ResultStore(out), settings or EvalSettings(batch_size=4), select_metrics(selection))
    return runner.run(saes, {source.hook_name or HOOK: source})


def values_by_sae(outcome: RunOutcome) -> dict[str, dict[str, float]]:
    return {
        r.handle.sae_id: {v.metric: v.value for sh in r.shards for v in sh.values if v.latent is None}
        for r in outcome.results
    }


def handles(saes: Sequence[SAE]) -> list[SaeHandle]:
    return [handle_from_sae(s, f"sae{i}") for i, s in enumerate(saes)]
