"""Benchmark at GPT-2 small's shape: evalkit against the floor and against sae-lens `run_evals`; memory; output sizes.

    .venv/bin/python benchmarks/bench_real.py [--part speed,memory,sizes] [--n-tokens 4096] [--n-saes 4]
        [--device cuda] [--dtype bfloat16]

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
        shared, so compare ratios measured in the same run. `--device cuda` (and `--dtype bfloat16`) runs the model,
        the SAEs and evalkit there, every timed block synchronised; tokens/s is then the figure to quote.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from real_shape import (
    BATCH_SEQS,
    BOS,
    D_MODEL,
    D_SAE,
    HOOK,
    SEQ_LEN,
    PeakAnon,
    calibrated_saes,
    cpu_s,
    floor,
    gpt2_small_shape,
    hook_acts,
    load_line,
    log,
    model_source,
    place,
    run_evalkit,
    timed,
    token_rows,
)
from sae_lens.saes.sae import SAE
from transformer_lens import HookedTransformer

from evalkit.core.batch import ActivationBatch
from evalkit.engine.runconfig import DataSource, SaeLike, handle_from_sae
from metrics.base import load_metric_modules

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


def speed(
    n_saes: int,
    n_tokens: int,
    group_sets: list[str],
    saelens_saes: int,
    floor_each: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
) -> None:
    """`floor_each`: measure the floor again after every group set, and give each set's multiple against the mean
    of the floors just before and after it (on a shared machine the load changes within minutes). `device` and
    `dtype` place the model and the SAEs (calibrated on the CPU in float32 first) for every row."""
    torch.manual_seed(0)
    model = gpt2_small_shape()
    tokens = token_rows(n_tokens)
    saes = calibrated_saes(n_saes, D_MODEL, D_SAE, hook_acts(model, tokens[:16]).flatten(0, 1))
    place(model, saes, device, dtype)
    handles: list[SaeLike] = [handle_from_sae(s, f"sae{i}") for i, s in enumerate(saes)]
    log.info(
        "speed: %d SAEs d_sae %d, %d tokens at %s, %s %s, torch threads %d",
        n_saes,
        D_SAE,
        tokens.numel(),
        HOOK,
        device,
        dtype,
        torch.get_num_threads(),
    )
    load_metric_modules()  # imports (scikit-learn, scipy) are not evaluation time
    log.info("start: %s", load_line())
    with PeakAnon() as peak:
        fw, fc = floor(model, saes, tokens)
    # cores = cpu s / wall s: how many of the CPUs the row kept busy on average.
    head = ("", "wall s", "cpu s", "cores", "x floor", "x floor", "tokens/s", "peak anon")
    log.info("%-32s %8s %8s %6s %8s %8s %9s %10s", *head)
    log.info("%-32s %8s %8s %6s %8s %8s %9s %10s", "", "", "", "", "(wall)", "(cpu)", "(wall)", "MiB")
    row = "%-32s %8.1f %8.1f %6.2f %8.2f %8.2f %9.0f %10.0f"
    n = tokens.numel()
    log.info(row, "floor", fw, fc, fc / fw, 1.0, 1.0, n / fw, peak.mib)
    core_wall = None
    l0 = []
    for name in group_sets:
        w0, c0 = time.perf_counter(), cpu_s()
        with PeakAnon() as peak:
            runner = run_evalkit(handles, model_source(model, tokens), GROUP_SETS[name], device=device, dtype=dtype)
        w, c = time.perf_counter() - w0, cpu_s() - c0
        outcome = runner.outcome  # type: ignore[attr-defined]
        l0 = [v.value for r in outcome.results for sh in r.shards for v in sh.values if v.metric == "l0"]
        core_wall = core_wall or w
        if floor_each:
            next_w, next_c = floor(model, saes, tokens)
            ratios = (2 * w / (fw + next_w), 2 * c / (fc + next_c))
            log.info(row, "evalkit " + name, w, c, c / w, *ratios, n / w, peak.mib)
            log.info(row, "floor", next_w, next_c, next_c / next_w, 1.0, 1.0, n / next_w, float("nan"))
            fw, fc = next_w, next_c
            continue
        log.info(row, "evalkit " + name, w, c, c / w, w / fw, c / fc, n / w, peak.mib)
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
    parser.add_argument("--device", default="cpu", help="the speed part's device, e.g. cuda (default cpu)")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="the speed part's dtype"
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
        speed(args.n_saes, args.n_tokens, group_sets, saelens_saes, args.floor_each, args.device, args.dtype)
    if "memory" in parts:
        memory([int(t) for t in args.memory_tokens.split(",")])
    if "sizes" in parts:
        sizes(args.sizes_tokens)


if __name__ == "__main__":
    main()
