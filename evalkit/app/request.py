"""The typed run request: what `evalkit run` evaluates and how. The CLI parses argv into one; the demo and the
tests build one directly (no faked argv, no hand-made argparse Namespaces)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from evalkit.core.defaults import DEFAULT_BATCH_TOKENS, DEFAULT_STDERR_BLOCKS, DTYPE_NAMES
from evalkit.core.errors import EvalkitInputError

# Light at import: `evalkit run --help` builds no world and loads no torch (tests/test_app_startup.py).
if TYPE_CHECKING:
    from evalkit.engine.runconfig import EvalSettings
    from evalkit.world.build import World

log = logging.getLogger(__name__)

AutointerpMode = Literal["baseline", "llm", "off"]

GPU_BYTES_PER_TOKEN = 4 * (4 * 262_144 + 8 * 131_072 + 64 * 4_608)
"""A bound on one token's working set on the GPU: clean and patched log-probabilities over a Gemma-sized
vocabulary, dense codes and their masks for a 131k-latent SAE, and the model's activations at d_model 4,608."""


def batch_tokens(requested: int | None, device: str) -> int:
    """--batch-size when given; on a CUDA device, as many tokens as half its free memory holds at
    GPU_BYTES_PER_TOKEN each (at least 512, at most 65,536); elsewhere DEFAULT_BATCH_TOKENS."""
    if requested is not None:
        return requested
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            chosen = int(max(512, min(65_536, free // 2 // GPU_BYTES_PER_TOKEN)))
            log.info("batch size %d tokens, from %.1f GiB free on %s", chosen, free / 2**30, device)
            return chosen
    return DEFAULT_BATCH_TOKENS


@dataclass(frozen=True)
class RunRequest:
    """One evaluation run. Field names match `evalkit run`'s options (`--batch-size` -> batch_size)."""

    sae: tuple[str, ...]
    """SAE folders/files, folders of SAEs (searched recursively), or sae-lens:RELEASE/SAE_ID."""
    out: Path = Path("evalkit-out")
    """Output folder."""
    format: str | None = None
    """SAE file format; None detects it from the files present."""
    activations: str | None = None
    """Precomputed activations file; CE/KL metrics are then skipped with a reason."""
    model: str | None = None
    """transformer-lens model name or local folder; None takes it from the SAE config."""
    hook: str | None = None
    """Hook point; None takes it from the SAE config."""
    dataset: str | None = None
    """Text or token data: a local .txt/.jsonl/.parquet or a Hugging Face dataset name."""
    text_column: str | None = None
    """The dataset's text column; None picks the usual names."""
    tokens: int | None = None
    """Evaluation tokens (after excluding special tokens); None: all the source yields."""
    batch_size: int | None = None
    """Tokens per batch, rounded down to whole sequences; None: DEFAULT_BATCH_TOKENS, or on a CUDA device what half
    its free memory holds (`batch_tokens`)."""
    seq_len: int | None = None
    """Tokens per sequence for text data."""
    metrics: str = "all"
    """Comma-separated metric entries, metric names or groups, or 'all'. Entries registered on request
    (saebench_weights) come only from their own names, never from a group or 'all'."""
    device: str = "cpu"
    dtype: str = "float32"
    """SAE compute dtype (one of DTYPE_NAMES)."""
    seed: int = 0
    """Seed for any sampling metrics and autointerp do."""
    stderr_blocks: int = DEFAULT_STDERR_BLOCKS
    """Jackknife blocks of whole sequences for token-level standard errors (metrics.jackknife); 0: none."""
    exclude_special: bool = True
    """Exclude BOS/EOS/PAD tokens from every metric."""
    max_norm_multiple: float | None = None
    """Drop tokens whose norm exceeds this multiple of the median token norm; None keeps all."""
    autointerp: AutointerpMode = "off"
    llm_base_url: str | None = None
    llm_model: str | None = None
    max_llm_cost: float | None = None
    """Stop LLM requests at this estimated cost (USD)."""
    force: bool = False
    """Recompute results already cached in `out`."""
    strict: bool = False
    """Stop at the first bad SAE (default: report it and evaluate the rest)."""
    wait: bool = False
    """Wait for another run holding `out`'s lock (default: exit 2 naming it)."""
    checkpoint_every: int | None = None
    """Save the pass's accumulator state every this many batches; None: about every 5 minutes of wall time."""
    no_report: bool = False
    """Do not write report.html at the end of the run."""
    executor: Literal["local", "ray"] = "local"
    """local: this process; ray: work units on a Ray cluster (evalkit.app.executors)."""
    ray_address: str | None = None
    """Ray cluster to join; None starts a local one."""
    split: str = "auto"
    """Work units by SAEs or by token shards (evalkit.engine.distributed SPLITS); auto picks."""
    workers: int | None = None
    """ray: Ray workers (None: the cluster's GPUs or CPUs); local: worker processes on this machine, each
    evaluating a share of the SAEs (None or 1: this process; evalkit.app.parallel)."""
    seed_group: tuple[str, ...] = ()
    """Explicit seed groups, each 'PATH,PATH[,...]'; default: grouped by config."""
    labels: str | None = None
    """Token-level concept labels file."""
    world: World | None = field(default=None, compare=False)
    """The embedded world to evaluate on when no other source is given (the demo passes the world its zoo was
    trained on); None: the default world."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunRequest:
        """The request `evalkit run`'s parsed options stand for."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        values["sae"] = tuple(values.get("sae") or ())
        values["seed_group"] = tuple(values.get("seed_group") or ())
        values["out"] = Path(values.get("out") or "evalkit-out")
        return cls(**values)

    def settings(self) -> EvalSettings:
        """The engine's settings for this request; bad values are input errors naming their option."""
        for name in ("tokens", "batch_size", "seq_len"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise EvalkitInputError(f"--{name.replace('_', '-')}", f"must be positive, got {value}")
        if self.stderr_blocks < 0 or self.stderr_blocks == 1:
            raise EvalkitInputError("--stderr-blocks", f"must be 0 (off) or at least 2, got {self.stderr_blocks}")
        if self.max_norm_multiple is not None and self.max_norm_multiple <= 0:
            raise EvalkitInputError("--max-norm-multiple", f"must be positive, got {self.max_norm_multiple}")
        if self.checkpoint_every is not None and self.checkpoint_every <= 0:
            raise EvalkitInputError("--checkpoint-every", f"must be positive, got {self.checkpoint_every}")
        if self.dtype not in DTYPE_NAMES:
            raise EvalkitInputError("--dtype", f"must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        from evalkit.engine.runconfig import EvalSettings

        return EvalSettings(
            n_tokens=self.tokens,
            batch_size=batch_tokens(self.batch_size, self.device),
            seq_len=self.seq_len,
            exclude_special=self.exclude_special,
            max_norm_multiple=self.max_norm_multiple,
            dtype=self.dtype,
            seed=self.seed,
            stderr_blocks=self.stderr_blocks,
            device=self.device,
            force=self.force,
        )

    def explicit_groups(self) -> list[list[str]]:
        return [[p.strip() for p in g.split(",") if p.strip()] for g in self.seed_group]
