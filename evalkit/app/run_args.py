"""The options of `evalkit run` (docs/cli.md lists each; tests/test_docs.py checks the two agree).

Declared apart from the run's wiring (evalkit.app.run_cli) so that both stay short; no heavy imports here,
so `evalkit run --help` answers in well under a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evalkit.app.executors import add_executor_args
from evalkit.core.defaults import DEFAULT_BATCH_TOKENS, DEFAULT_STDERR_BLOCKS, DTYPE_NAMES


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of `evalkit run`, executor options included."""
    p.add_argument(
        "--sae",
        action="append",
        required=True,
        metavar="PATH",
        help="an SAE folder/file, a folder of SAEs (searched recursively), or sae-lens:RELEASE/SAE_ID; repeatable",
    )
    p.add_argument("--format", default=None, help="SAE file format (default: detected from the files present)")
    p.add_argument(
        "--activations",
        metavar="FILE",
        help="precomputed activations (.safetensors/.npy/.pt); CE/KL metrics are then skipped with a reason",
    )
    p.add_argument("--model", help="transformer-lens model name or local folder (default: from the SAE config)")
    p.add_argument("--hook", help="hook point (default: from the SAE config)")
    p.add_argument("--dataset", help="text or token data: local .txt/.jsonl/.parquet or a Hugging Face dataset name")
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="evaluation tokens (after excluding special tokens); default: all the source yields",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"tokens per batch, rounded down to whole sequences (default {DEFAULT_BATCH_TOKENS}; on a CUDA device, "
        "chosen from its free memory)",
    )
    p.add_argument(
        "--seq-len", type=int, default=None, help="tokens per sequence for text data (default: the SAE's context size)"
    )
    p.add_argument(
        "--text-column",
        default=None,
        metavar="NAME",
        help="the text field of .jsonl/.parquet/Hugging Face records (default: text, content, document or sentence)",
    )
    p.add_argument(
        "--metrics",
        default="all",
        help="comma-separated metric names or groups (core, downstream, "
        "sparsity, alignment, norm, afa, stability, concepts, probing, "
        "autointerp, all); default all. saebench_weights (SAEBench's weight cosines, O(d_sae^2 d_in)) "
        "runs only when named: all,saebench_weights",
    )
    p.add_argument("--out", default="evalkit-out", type=Path, help="output folder (default evalkit-out/)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_NAMES,
        help="compute dtype of the model and the SAEs (default float32; metrics accumulate in float64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for sampling done by metrics (default 0)")
    p.add_argument(
        "--stderr-blocks",
        type=int,
        default=DEFAULT_STDERR_BLOCKS,
        metavar="K",
        help="jackknife blocks of whole sequences for token-level standard errors "
        f"(default {DEFAULT_STDERR_BLOCKS}; 0 = no standard errors)",
    )
    p.add_argument(
        "--exclude-special",
        dest="exclude_special",
        action="store_true",
        default=True,
        help="exclude BOS/EOS/PAD tokens from every metric (default)",
    )
    p.add_argument(
        "--include-special", dest="exclude_special", action="store_false", help="evaluate special tokens too"
    )
    p.add_argument(
        "--max-norm-multiple",
        type=float,
        default=None,
        metavar="M",
        help="drop tokens whose norm exceeds M x the median token norm (default: keep all)",
    )
    p.add_argument(
        "--autointerp",
        choices=("baseline", "llm", "off"),
        default="off",
        help="auto-interpretability stage (default off)",
    )
    p.add_argument("--llm-base-url", help="OpenAI-compatible endpoint for --autointerp llm")
    p.add_argument("--llm-model", help="model name at that endpoint")
    p.add_argument("--max-llm-cost", type=float, default=None, help="stop LLM requests at this estimated cost (USD)")
    p.add_argument("--force", action="store_true", help="recompute results already cached in --out")
    p.add_argument(
        "--seed-group",
        action="append",
        default=[],
        metavar="PATH,PATH[,...]",
        help="SAEs that differ only in training seed (repeatable; default: grouped by config)",
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad SAE (default: report it and evaluate the rest)"
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for another run holding --out's lock (default: exit 2 naming it)"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="save the pass's accumulator state every N batches (default: about every 5 minutes of wall time)",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="token-level concept labels (.safetensors with tensor 'labels' and metadata 'label_names')",
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html (`evalkit report DIR` can later)")
    add_executor_args(p)
