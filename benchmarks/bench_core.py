"""Benchmark: evalkit's one-pass runner vs sae-lens `run_evals` once per SAE, on the same SAEs and tokens.

Both compute core + downstream (CE/KL) + sparsity metrics at one hook. evalkit reads each batch once for all
SAEs and runs only the layers after the hook for each splice; sae-lens reruns the whole model three times per
batch per SAE plus a sparsity pass. Peak memory of evalkit is measured in a fresh subprocess (ru_maxrss) at
n_tokens and 2 × n_tokens: it should stay flat, since every metric streams.

    .venv/bin/python benchmarks/bench_core.py [--n-saes 10] [--n-tokens 4096]

Uses generated SAEs (standard and topk, d_sae = 8 × d_model) on a small random 4-layer HookedTransformer.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_sources import hooked_model_source
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.saes.sae import SAE, SAEMetadata
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer, HookedTransformerConfig

from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike, handle_from_sae
from evalkit.engine.runner import Runner
from evalkit.engine.store import ResultStore
from metrics.base import load_metric_modules, select_metrics

log = logging.getLogger("bench_core")
HOOK = "blocks.2.hook_resid_pre"
SEQ_LEN, BATCH_SEQS, BOS = 128, 8, 0


def bench_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=4,
        d_model=128,
        d_head=32,
        n_heads=4,
        d_mlp=512,
        d_vocab=2000,
        n_ctx=SEQ_LEN,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    return HookedTransformer(cfg).eval()


def bench_saes(n: int, d_in: int) -> list[SAE]:
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK, model_name="bench")
    saes: list[SAE] = []
    for i in range(n):
        if i % 2:
            saes.append(TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=8 * d_in, k=16 + i, metadata=meta)))
        else:
            saes.append(StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=8 * d_in, metadata=meta)))
    return saes


def bench_tokens(n_tokens: int, d_vocab: int) -> torch.Tensor:
    n_seq = max(BATCH_SEQS, n_tokens // SEQ_LEN)
    tokens = torch.randint(1, d_vocab, (n_seq, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = BOS
    return tokens


def evalkit_source(model: HookedTransformer, tokens: torch.Tensor) -> DataSource:
    return hooked_model_source(model, tokens, HOOK, BATCH_SEQS, BOS, "bench")


def run_evalkit(model: HookedTransformer, saes: list[SAE], tokens: torch.Tensor) -> float:
    load_metric_modules()
    handles: list[SaeLike] = [handle_from_sae(s, f"sae{i}") for i, s in enumerate(saes)]
    with tempfile.TemporaryDirectory() as out:
        runner = Runner(
            ResultStore(Path(out)),
            EvalSettings(batch_size=BATCH_SEQS * SEQ_LEN, force=True),
            select_metrics("core,downstream,sparsity"),
        )
        t0 = time.perf_counter()
        runner.run(handles, {HOOK: evalkit_source(model, tokens)})
        return time.perf_counter() - t0


class _FixedTokenStore:
    """What run_evals reads from an ActivationsStore, over fixed tokens."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.store_batch_size_prompts, self.context_size, self._next = (
            tokens,
            BATCH_SEQS,
            SEQ_LEN,
            0,
        )

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        batch = self.tokens[self._next : self._next + n]
        self._next += n
        return batch

    def reset_input_dataset(self) -> None:
        self._next = 0


def run_saelens(model: HookedTransformer, saes: list[SAE], tokens: torch.Tensor) -> float:
    n_batches = tokens.shape[0] // BATCH_SEQS
    cfg = EvalConfig(
        batch_size_prompts=BATCH_SEQS,
        n_eval_reconstruction_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        n_eval_sparsity_variance_batches=n_batches,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    t0 = time.perf_counter()
    for sae in saes:
        run_evals(sae, _FixedTokenStore(tokens), model, ActivationScaler(), cfg, exclude_special_tokens=[BOS])
    return time.perf_counter() - t0


def memory_worker(n_saes: int, n_tokens: int) -> None:
    """Run evalkit once and print its wall time and peak RSS (MiB) as JSON (called in a fresh process)."""
    model = bench_model()
    wall = run_evalkit(model, bench_saes(n_saes, model.cfg.d_model), bench_tokens(n_tokens, model.cfg.d_vocab))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n_tokens": n_tokens, "wall_s": wall, "peak_rss_mib": peak_mib}))


def peak_memory(n_saes: int, n_tokens: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-worker", "--n-saes", str(n_saes), "--n-tokens", str(n_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-saes", type=int, default=10, help="SAEs evaluated at one hook")
    parser.add_argument("--n-tokens", type=int, default=4096, help="tokens (BOS included) per evaluation")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.memory_worker:
        memory_worker(args.n_saes, args.n_tokens)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = bench_model()
    saes = bench_saes(args.n_saes, model.cfg.d_model)
    tokens = bench_tokens(args.n_tokens, model.cfg.d_vocab)
    t_evalkit = run_evalkit(model, saes, tokens)
    t_saelens = run_saelens(model, saes, tokens)
    log.info("n_saes=%d n_tokens=%d", args.n_saes, tokens.numel())
    log.info(
        "evalkit one pass: %.2f s | sae-lens run_evals x%d: %.2f s | speed-up %.1fx",
        t_evalkit,
        args.n_saes,
        t_saelens,
        t_saelens / t_evalkit,
    )
    for n in (args.n_tokens, 2 * args.n_tokens):
        m = peak_memory(args.n_saes, n)
        log.info(
            "evalkit at n_tokens=%d: wall %.2f s, peak RSS %.0f MiB",
            m["n_tokens"],
            m["wall_s"],
            m["peak_rss_mib"],
        )


if __name__ == "__main__":
    main()
