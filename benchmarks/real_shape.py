"""GPT-2 small's shape for benchmarks/bench_real.py: the model, tokens, calibrated SAEs, the data source, one
evalkit run, the floor, and the timing and memory helpers (see bench_real.py's docstring for what is measured)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_sources import hooked_model_source
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAE, SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
from evalkit.engine.runner import Runner
from evalkit.engine.store import ResultStore
from metrics.base import load_metric_modules, select_metrics
from metrics.weight_cosines import clear_decoder_cosines

log = logging.getLogger("bench_real")
HOOK, LAYER = "blocks.8.hook_resid_pre", 8
D_MODEL, D_SAE, SEQ_LEN, BATCH_SEQS, BOS = 768, 24576, 128, 32, 50256
TARGET_L0 = 60


class PeakAnon:
    """Peak anonymous resident memory (RssAnon: not file-backed pages such as a memory-mapped activation file) of
    this process while the block runs, sampled every 20 ms by a thread (MiB)."""

    def __enter__(self) -> PeakAnon:
        self.kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.kib = max(self.kib, int(line.split()[1]))
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.kib / 1024


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def sync() -> None:
    """Wait for queued GPU work, so a timed block ends when its kernels do (nothing on a CPU-only run)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, cpu s) of one call (GPU work included: synchronised before and after)."""
    sync()
    w0, c0 = time.perf_counter(), cpu_s()
    fn()
    sync()
    return time.perf_counter() - w0, cpu_s() - c0


def gpt2_small_shape() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=D_MODEL,
        d_head=64,
        n_heads=12,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=0,
    )
    return HookedTransformer(cfg).eval()


def token_rows(n_tokens: int, seed: int = 1) -> torch.Tensor:
    n_seq = max(1, n_tokens // SEQ_LEN)
    tokens = torch.randint(0, 50000, (n_seq, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = BOS
    return tokens


def hook_acts(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [model(tokens[i : i + BATCH_SEQS], stop_at_layer=LAYER) for i in range(0, len(tokens), BATCH_SEQS)]
    )


def calibrated_saes(n: int, d_in: int, d_sae: int, acts_ND: torch.Tensor, seed: int = 0) -> list[SAE]:
    """Standard SAEs with unit decoder rows, W_enc = W_decᵀ, and b_enc set per latent so each fires on about
    TARGET_L0 / d_sae of the calibration tokens (l0 near TARGET_L0, as real residual SAEs)."""
    saes: list[SAE] = []
    sample = acts_ND[torch.randperm(len(acts_ND), generator=torch.Generator().manual_seed(seed))[:2048]]
    for i in range(n):
        gen = torch.Generator().manual_seed(seed + i)
        meta = SAEMetadata(hook_name=HOOK, model_name="gpt2-small-shape")
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
        W_dec = torch.randn(d_sae, d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(W_dec)
            sae.W_enc.copy_(W_dec.T)
            sae.b_dec.copy_(sample.mean(0))
            pre = (sample - sae.b_dec) @ sae.W_enc
            sae.b_enc.copy_(-pre.quantile(1 - TARGET_L0 / d_sae, dim=0))
        saes.append(sae.eval())
    return saes


def place(model: HookedTransformer, saes: list[SAE], device: str, dtype: str) -> None:
    """Move the model and the SAEs to `device` and `dtype` (as `evalkit run --device --dtype` loads them)."""
    model.to(device)
    model.to(getattr(torch, dtype))
    for sae in saes:
        sae.to(device=device, dtype=getattr(torch, dtype))


def model_source(model: HookedTransformer, tokens: torch.Tensor) -> DataSource:
    return hooked_model_source(model, tokens, HOOK, BATCH_SEQS, BOS, "bench-real")


def run_evalkit(
    handles: list[SaeLike],
    source: DataSource,
    metrics: str,
    out: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Runner:
    load_metric_modules()
    # The decoder Gram summary is kept per SAE object for the metrics of one run; every run timed here pays for
    # its own (before this, a group set after `+afa` reused its summary and looked ~0.3x the floor cheaper).
    clear_decoder_cosines()
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(
            ResultStore(out or Path(tmp)),
            EvalSettings(batch_size=BATCH_SEQS * SEQ_LEN, force=True, device=device, dtype=dtype),
            select_metrics(metrics),
        )
        runner.outcome = runner.run(handles, {HOOK: source})  # type: ignore[attr-defined]
        sync()
    return runner


def floor(model: HookedTransformer, saes: list[SAE], tokens: torch.Tensor) -> tuple[float, float]:
    """(wall, cpu) of the floor: a full forward pass once, then per SAE encode + decode + the layers after the hook."""
    w, c = timed(lambda: [model(tokens[i : i + BATCH_SEQS]) for i in range(0, len(tokens), BATCH_SEQS)])
    acts = [model(tokens[i : i + BATCH_SEQS], stop_at_layer=LAYER) for i in range(0, len(tokens), BATCH_SEQS)]
    for sae in saes:

        def per_sae(sae: SAE = sae) -> None:
            for a_BSD in acts:
                f = torch.relu((a_BSD - sae.b_dec) @ sae.W_enc + sae.b_enc)
                model(f @ sae.W_dec + sae.b_dec, start_at_layer=LAYER)

        dw, dc = timed(per_sae)
        w, c = w + dw, c + dc
    return w, c
