"""Benchmark at GPT-2 small's shape: evalkit against the floor and against sae-lens `run_evals`; memory; output sizes.

    .venv/bin/python benchmarks/bench_real.py [--part speed,memory,sizes] [--n-tokens 4096] [--n-saes 4]

speed   A HookedTransformer with GPT-2 small's exact shape (12 layers, d_model 768, 50,257-token vocabulary, random
        weights), hook blocks.8.hook_resid_pre, N standard SAEs of d_sae 24,576 whose biases are calibrated to an
        l0 near 60 (gpt2-small-res-jb's range), 128-token sequences. Measured in one run:
          floor = one full forward pass over the tokens, then per SAE the encode and decode matmuls and the layers
                  after the hook on the reconstruction (the splice), all with the batch size evalkit uses;
          evalkit per group set (core+downstream+sparsity; + alignment; + norm; + afa; all of them; on request
                  `+saebench_weights`, the opt-in SAEBench weight cosines), as a multiple of the floor (targets:
                  core+downstream+sparsity <= 1.25x, all groups <= 2x), with the peak anonymous memory of each;
          sae-lens run_evals (CE/KL, reconstruction, sparsity) on the same SAEs and tokens, and evalkit's ratio to it.
        Wall and CPU time (user+sys of this process) are both printed, and the load average: the machine may be
        shared, so compare ratios measured in the same run.
memory  Anonymous resident memory (RssAnon, sampled every 20 ms: not the pages of the memory-mapped activation file)
        of `evalkit run`'s engine on precomputed activations with two 24,576-latent SAEs, core+sparsity, at two token
        counts, each in a fresh process.
sizes   results.parquet, results.csv, features.parquet, features.csv and report.html for SAEs of d_sae 4,096 and 24,576
        (all groups that need no model), so the growth with d_sae is visible.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAE, SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from evalkit.core.batch import ActivationBatch
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike, handle_from_sae
from evalkit.engine.runner import Runner
from evalkit.engine.store import ResultStore
from metrics.base import load_metric_modules, select_metrics
from metrics.weight_cosines import clear_decoder_cosines

log = logging.getLogger("bench_real")
HOOK, LAYER = "blocks.8.hook_resid_pre", 8
D_MODEL, D_SAE, SEQ_LEN, BATCH_SEQS, BOS = 768, 24576, 128, 32, 50256
TARGET_L0 = 60
GROUP_SETS = {
    "core+downstream+sparsity": "core,downstream,sparsity",
    "+alignment": "core,downstream,sparsity,alignment",
    "+norm": "core,downstream,sparsity,norm",
    "+afa": "core,downstream,sparsity,afa",
    "all five groups": "core,downstream,sparsity,alignment,norm,afa",
    # SAEBench's per-latent weight cosines, computed only when named (two O(d_sae²·d_in) Gram passes per SAE,
    # whatever the token count): what asking for them costs. Not in the default --group-sets.
    "+saebench_weights": "core,downstream,sparsity,saebench_weights",
}
DEFAULT_GROUP_SETS = [name for name in GROUP_SETS if name != "+saebench_weights"]


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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, cpu s) of one call."""
    w0, c0 = time.perf_counter(), cpu_s()
    fn()
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


def model_source(model: HookedTransformer, tokens: torch.Tensor) -> DataSource:
    def batches() -> Iterator[ActivationBatch]:
        for i in range(0, tokens.shape[0], BATCH_SEQS):
            t_BS = tokens[i : i + BATCH_SEQS]
            with torch.no_grad():
                acts_BSD = model(t_BS, stop_at_layer=LAYER)
            yield ActivationBatch(acts_BSD, torch.arange(SEQ_LEN).expand_as(t_BS).clone(), t_BS == BOS, t_BS)

    return DataSource(
        batches,
        {"kind": "bench", "n_seq": tokens.shape[0]},
        model=model,
        hook_name=HOOK,
        fingerprint=f"bench-real:{tokens.shape[0]}",
        has_tokens=True,
        label_names=(),
    )


def run_evalkit(handles: list[SaeLike], source: DataSource, metrics: str, out: Path | None = None) -> Runner:
    load_metric_modules()
    # The decoder Gram summary is kept per SAE object for the metrics of one run; every run timed here pays for
    # its own (before this, a group set after `+afa` reused its summary and looked ~0.3x the floor cheaper).
    clear_decoder_cosines()
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(
            ResultStore(out or Path(tmp)),
            EvalSettings(batch_size=BATCH_SEQS * SEQ_LEN, force=True),
            select_metrics(metrics),
        )
        runner.outcome = runner.run(handles, {HOOK: source})  # type: ignore[attr-defined]
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


def run_saelens(model: HookedTransformer, saes: list[SAE], tokens: torch.Tensor) -> tuple[float, float]:
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    class FixedTokens:
        def __init__(self) -> None:
            self.store_batch_size_prompts, self.context_size, self._next = BATCH_SEQS, SEQ_LEN, 0

        def get_batch_tokens(self, n: int) -> torch.Tensor:
            batch = tokens[self._next : self._next + n]
            self._next += n
            return batch

        def reset_input_dataset(self) -> None:
            self._next = 0

    n_batches = max(1, tokens.shape[0] // BATCH_SEQS)
    cfg = EvalConfig(
        batch_size_prompts=BATCH_SEQS,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    return timed(
        lambda: [
            run_evals(s, FixedTokens(), model, ActivationScaler(), cfg, exclude_special_tokens=[BOS]) for s in saes
        ]
    )


def speed(n_saes: int, n_tokens: int, group_sets: list[str], saelens_saes: int, floor_each: bool = False) -> None:
    """`floor_each`: measure the floor again after every group set, and give each set's multiple against the mean
    of the floors just before and after it (on a shared machine the load changes within minutes)."""
    torch.manual_seed(0)
    model = gpt2_small_shape()
    tokens = token_rows(n_tokens)
    saes = calibrated_saes(n_saes, D_MODEL, D_SAE, hook_acts(model, tokens[:16]).flatten(0, 1))
    handles: list[SaeLike] = [handle_from_sae(s, f"sae{i}") for i, s in enumerate(saes)]
    log.info(
        "speed: %d SAEs d_sae %d, %d tokens at %s, torch threads %d",
        n_saes,
        D_SAE,
        tokens.numel(),
        HOOK,
        torch.get_num_threads(),
    )
    load_metric_modules()  # imports (scikit-learn, scipy) are not evaluation time
    log.info("start: %s", load_line())
    with PeakAnon() as peak:
        fw, fc = floor(model, saes, tokens)
    head = ("", "wall s", "cpu s", "x floor", "x floor", "tokens/s", "peak anon")
    log.info("%-32s %8s %8s %8s %8s %9s %10s", *head)
    log.info("%-32s %8s %8s %8s %8s %9s %10s", "", "", "", "(wall)", "(cpu)", "(wall)", "MiB")
    row = "%-32s %8.1f %8.1f %8.2f %8.2f %9.0f %10.0f"
    n = tokens.numel()
    log.info(row, "floor", fw, fc, 1.0, 1.0, n / fw, peak.mib)
    core_wall = None
    l0 = []
    for name in group_sets:
        w0, c0 = time.perf_counter(), cpu_s()
        with PeakAnon() as peak:
            runner = run_evalkit(handles, model_source(model, tokens), GROUP_SETS[name])
        w, c = time.perf_counter() - w0, cpu_s() - c0
        outcome = runner.outcome  # type: ignore[attr-defined]
        l0 = [v.value for r in outcome.results for sh in r.shards for v in sh.values if v.metric == "l0"]
        core_wall = core_wall or w
        if floor_each:
            next_w, next_c = floor(model, saes, tokens)
            log.info(row, "evalkit " + name, w, c, 2 * w / (fw + next_w), 2 * c / (fc + next_c), n / w, peak.mib)
            log.info(row, "floor", next_w, next_c, 1.0, 1.0, n / next_w, float("nan"))
            fw, fc = next_w, next_c
            continue
        log.info(row, "evalkit " + name, w, c, w / fw, c / fc, n / w, peak.mib)
    log.info("SAE l0: %s", ", ".join(f"{v:.1f}" for v in l0))
    log.info("after evalkit: %s", load_line())
    if saelens_saes and core_wall is not None:
        sw, sc = run_saelens(model, saes[:saelens_saes], tokens)
        scale = n_saes / saelens_saes
        log.info(
            "sae-lens run_evals on %d SAE(s): wall %.1f s, cpu %.1f s%s; per SAE %.1f s vs evalkit "
            "core+downstream+sparsity %.1f s per SAE: evalkit %.2fx faster (wall)",
            saelens_saes,
            sw,
            sc,
            f" (x{scale:g} for {n_saes} SAEs: {sw * scale:.1f} s)" if scale != 1 else "",
            sw / saelens_saes,
            core_wall / n_saes,
            (sw / saelens_saes) / (core_wall / n_saes),
        )
        log.info("sae-lens per SAE as a multiple of the floor: %.2f (wall)", sw * scale / fw)
    log.info("end: %s", load_line())


def anon_memory_worker(n_tokens: int, acts_path: Path) -> None:
    """One engine run on the activation file (core+sparsity, two SAEs); prints the peak RssAnon (MiB) as JSON."""
    from evalkit.sources.files import ActivationFileSource

    with PeakAnon() as peak:
        acts = ActivationFileSource(acts_path, n_tokens=n_tokens, batch_size=4096)
        source = DataSource(
            lambda: iter(acts),
            {"kind": "file"},
            None,
            HOOK,
            fingerprint=f"mem:{n_tokens}",
            has_tokens=False,
            label_names=(),
        )
        sample_acts = torch.randn(2048, D_MODEL, generator=torch.Generator().manual_seed(5))
        saes = calibrated_saes(2, D_MODEL, D_SAE, sample_acts)
        handles: list[SaeLike] = [handle_from_sae(s, f"sae{i}") for i, s in enumerate(saes)]
        w, c = timed(lambda: run_evalkit(handles, source, "core,sparsity"))
    print(json.dumps({"n_tokens": n_tokens, "peak_anon_mib": peak.mib, "wall_s": w, "cpu_s": c}))


def memory(token_counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.npy"
        import numpy as np

        n = max(token_counts)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D_MODEL))
        gen = np.random.default_rng(0)
        for i in range(0, n, 8192):
            arr[i : i + 8192] = gen.standard_normal((min(8192, n - i), D_MODEL), dtype=np.float32)
        arr.flush()
        del arr
        results = []
        for count in token_counts:
            cmd = [sys.executable, __file__, "--memory-worker", str(count), "--acts", str(path)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            log.info(
                "memory: %7d tokens, 2 SAEs d_sae %d, core+sparsity: peak anonymous RSS %.0f MiB (wall %.0f s, "
                "cpu %.0f s)",
                r["n_tokens"],
                D_SAE,
                r["peak_anon_mib"],
                r["wall_s"],
                r["cpu_s"],
            )
        lo, hi = min(r["peak_anon_mib"] for r in results), max(r["peak_anon_mib"] for r in results)
        log.info("memory: largest / smallest peak = %.3f (target: within 10%%)", hi / lo)


def sizes(n_tokens: int) -> None:
    from evalkit.engine.outputs import SaeOutput, write_outputs
    from reports.html import write_report

    torch.manual_seed(0)
    acts = torch.randn(n_tokens, D_MODEL, generator=torch.Generator().manual_seed(3))

    def batches() -> Iterator[ActivationBatch]:
        for i in range(0, n_tokens, 2048):
            a = acts[i : i + 2048].unsqueeze(1)
            yield ActivationBatch(
                a, torch.zeros(a.shape[:2], dtype=torch.long), torch.zeros(a.shape[:2], dtype=torch.bool), None
            )

    for d_sae in (4096, D_SAE):
        saes = calibrated_saes(2, D_MODEL, d_sae, acts[:2048])
        handles: list[SaeLike] = [handle_from_sae(s, f"sae{i}_d{d_sae}") for i, s in enumerate(saes)]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            source = DataSource(
                batches,
                {"kind": "sizes"},
                None,
                HOOK,
                fingerprint=f"sizes:{n_tokens}",
                has_tokens=False,
                label_names=(),
            )
            runner = run_evalkit(handles, source, "core,sparsity,alignment,norm,afa", out)
            outcome = runner.outcome  # type: ignore[attr-defined]
            write_outputs(out, [SaeOutput(r.handle, r.hook, r.shards) for r in outcome.results], {"sizes": True}, {})
            write_report(out)
            files = ("results.parquet", "results.csv", "features.parquet", "features.csv", "summary.csv", "report.html")
            listed = ", ".join(f"{f} {(out / f).stat().st_size / 1024:.0f} KiB" for f in files if (out / f).is_file())
            log.info(
                "sizes: 2 SAEs d_sae %6d (%d tokens; core,sparsity,alignment,norm,afa): %s", d_sae, n_tokens, listed
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="speed,memory,sizes", help="comma-separated: speed, memory, sizes")
    parser.add_argument("--n-saes", type=int, default=4)
    parser.add_argument("--n-tokens", type=int, default=4096, help="tokens for the speed part (BOS included)")
    parser.add_argument("--group-sets", default=",".join(DEFAULT_GROUP_SETS), help=f"among: {', '.join(GROUP_SETS)}")
    parser.add_argument("--saelens-saes", type=int, default=None, help="SAEs given to run_evals (default all; 0 skips)")
    parser.add_argument(
        "--floor-each", action="store_true", help="measure the floor again after each group set (a shared machine)"
    )
    parser.add_argument("--memory-tokens", default="50000,200000", help="token counts of the memory part")
    parser.add_argument("--sizes-tokens", type=int, default=4096)
    parser.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--acts", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.memory_worker is not None:
        anon_memory_worker(args.memory_worker, args.acts)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("evalkit").setLevel(logging.WARNING)
    parts = {p.strip() for p in args.part.split(",")}
    if "speed" in parts:
        group_sets = [g.strip() for g in args.group_sets.split(",") if g.strip()]
        saelens_saes = args.n_saes if args.saelens_saes is None else args.saelens_saes
        speed(args.n_saes, args.n_tokens, group_sets, saelens_saes, args.floor_each)
    if "memory" in parts:
        memory([int(t) for t in args.memory_tokens.split(",")])
    if "sizes" in parts:
        sizes(args.sizes_tokens)


if __name__ == "__main__":
    main()
