"""The runner's norm pre-pass and the token filter both passes share.

The filter decides which tokens are evaluation tokens: special tokens out (by default), at most `n_tokens` of
the rest (in source order), and optionally tokens whose norm exceeds M × the median. The pre-pass stores every
evaluation token's norm (one float each, so exact quantiles) and fingerprints the data for the config hash; when a
model computes the batches it keeps them (up to REPLAY_BYTES) so the evaluation pass replays them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from evalkit.core.batch import ActivationBatch
from evalkit.core.errors import EvalkitInputError
from evalkit.core.identity import DataFingerprint, JsonValue
from evalkit.core.progress import Progress
from evalkit.core.records import EvalContext
from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike

REPLAY_BYTES = 256 * 2**20
"""Activations the pre-pass keeps for the evaluation pass when a model computes them (256 MiB: GPT-2 small's
768-d residual stream for ~87,000 tokens); past that the model runs to the hook again, so memory stays bounded."""


@dataclass
class HookData:
    """What is known about one hook's data: from the pre-pass, or from the evaluation pass when none ran."""

    hook: str
    source: DataSource
    ctx: EvalContext
    fingerprint: str
    norm_limit: float | None
    """Tokens with a norm above this are dropped (`--max-norm-multiple`); None = keep all."""
    has_tokens: bool
    label_names: tuple[str, ...]
    n_tokens_read: int
    n_special_excluded: int
    n_norm_dropped: int
    prepassed: bool = True
    """False when the evaluation pass itself measured the norms (no metric needed them beforehand)."""


class TokenFilter:
    """Evaluation-token mask per batch; deterministic, so both passes select the same tokens."""

    def __init__(self, settings: EvalSettings, norm_limit: float | None = None) -> None:
        self.exclude_special = settings.exclude_special
        self.remaining = settings.n_tokens
        self.norm_limit = norm_limit

    def keep_before_norm(self, batch: ActivationBatch) -> torch.Tensor | None:
        """Mask [B, S] after the special-token rule and the token budget; None once the budget is spent."""
        if self.remaining is not None and self.remaining <= 0:
            return None
        keep_BS = ~batch.special_BS.bool() if self.exclude_special else torch.ones_like(batch.special_BS, dtype=bool)
        keep_BS = keep_BS.to(batch.acts_BSD.device)
        if self.remaining is not None:
            flat = keep_BS.flatten()
            flat = flat & (flat.cumsum(0) <= self.remaining)
            keep_BS = flat.reshape(keep_BS.shape)
            self.remaining -= int(keep_BS.sum())
        return keep_BS

    def keep(self, batch: ActivationBatch) -> torch.Tensor | None:
        keep_BS = self.keep_before_norm(batch)
        if keep_BS is not None and self.norm_limit is not None:
            keep_BS = keep_BS & (batch.acts_BSD.float().norm(dim=-1) <= self.norm_limit)
        return keep_BS


def check_batch(batch: ActivationBatch, i: int, source: DataSource, members: Sequence[SaeLike]) -> None:
    where = str(source.description.get("path") or source.description.get("kind") or "activations")
    if batch.acts_BSD.dim() != 3:
        raise EvalkitInputError(where, f"batch {i} has shape {tuple(batch.acts_BSD.shape)}; expected 3 dims")
    for s in members:
        if s.d_in != batch.d_in:
            raise EvalkitInputError(
                s.path,
                f"SAE d_in {s.d_in} does not match the activations' d_in {batch.d_in} at hook {source.hook_name}",
            )
    if not torch.isfinite(batch.acts_BSD).all():
        raise EvalkitInputError(
            where, f"activations contain NaN or Inf (batch {i}); evalkit does not drop them silently"
        )


class PassStats:
    """What one pass learns about the data: evaluation-token norms (one float each: exact quantiles), counts,
    whether tokens and labels are present, and a fingerprint of the data."""

    def __init__(self) -> None:
        self.norms: list[torch.Tensor] = []
        self.n_read = self.n_special = 0
        self.has_tokens = True
        self.label_names: tuple[str, ...] = ()
        self.fingerprint = DataFingerprint()
        self.n_batches_read = 0
        """Batches this process read (a pass resumed from a checkpoint reads fewer)."""
        self.resumed_at_batch = 0

    def state_dict(self) -> dict[str, torch.Tensor | int | bool | list[str]]:
        """For in-pass checkpoints. The fingerprint is not kept: a pass without a pre-pass has a source that
        vouches for its own fingerprint (provisional_hook_data), so this one is never used there."""
        norms = torch.cat(self.norms) if self.norms else torch.zeros(0, dtype=torch.float64)
        return {
            "norms": norms,
            "n_read": self.n_read,
            "n_special": self.n_special,
            "has_tokens": self.has_tokens,
            "label_names": list(self.label_names),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        norms = state["norms"]
        assert isinstance(norms, torch.Tensor)
        self.norms = [norms] if norms.numel() else []
        self.n_read, self.n_special = int(state["n_read"]), int(state["n_special"])  # type: ignore[call-overload]
        self.has_tokens = bool(state["has_tokens"])
        self.label_names = tuple(str(n) for n in state["label_names"])  # type: ignore[attr-defined]

    def add(self, batch: ActivationBatch, keep_BS: torch.Tensor, exclude_special: bool) -> None:
        self.n_read += batch.n_tokens
        if exclude_special:
            self.n_special += int((batch.special_BS.bool() & ~keep_BS.cpu()).sum())
        self.has_tokens = self.has_tokens and batch.tokens_BS is not None
        if batch.labels_BSL is not None and not self.label_names:
            self.label_names = batch.label_names
        self.fingerprint.update(batch.tokens_BS, batch.acts_BSD, keep_BS)
        self.norms.append(batch.acts_BSD.float()[keep_BS].norm(dim=-1).to("cpu", torch.float64))

    def hook_data(self, hook: str, source: DataSource, settings: EvalSettings, prepassed: bool) -> HookData:
        """The EvalContext from these norms (after the `--max-norm-multiple` cut when set)."""
        norms_N = torch.cat(self.norms).numpy() if self.norms else np.zeros(0)
        if norms_N.size == 0:
            where = str(source.description.get("path", hook))
            raise EvalkitInputError(where, "no evaluation tokens (all excluded?)")
        norm_limit = None
        n_before = norms_N.size
        if settings.max_norm_multiple is not None:
            norm_limit = settings.max_norm_multiple * float(np.median(norms_N))
            norms_N = norms_N[norms_N <= norm_limit]
        q25, q50, q75 = (float(q) for q in np.quantile(norms_N, [0.25, 0.5, 0.75]))
        if not all(math.isfinite(v) for v in (q25, q50, q75)):
            raise EvalkitInputError(hook, "token norms are not finite")
        ctx = EvalContext(
            median_norm=q50,
            norm_q25=q25,
            norm_q75=q75,
            n_tokens=int(norms_N.size),
            label_names=self.label_names,
            seed=settings.seed,
        )
        fingerprint = source.fingerprint or self.fingerprint.hexdigest()
        return HookData(
            hook,
            source,
            ctx,
            fingerprint,
            norm_limit,
            self.has_tokens,
            self.label_names,
            self.n_read,
            self.n_special,
            n_before - int(norms_N.size),
            prepassed,
        )


def norm_prepass(hook: str, source: DataSource, settings: EvalSettings, members: Sequence[SaeLike]) -> HookData:
    """Read the data once: validate it, keep evaluation-token norms, fingerprint it, build the EvalContext.

    A source that runs a model keeps its batches while they fit in REPLAY_BYTES: the returned HookData's source
    then replays them, so the evaluation pass does not run the model to the hook a second time."""
    token_filter = TokenFilter(settings)
    stats = PassStats()
    kept: list[ActivationBatch] | None = [] if source.model is not None else None
    kept_bytes = 0
    with Progress(None, f"norm pre-pass at {hook}", "tokens") as progress:
        for i, batch in enumerate(source.open_batches()):
            progress.update(batch.acts_BSD.shape[0] * batch.acts_BSD.shape[1])
            check_batch(batch, i, source, members)
            keep_BS = token_filter.keep_before_norm(batch)
            if keep_BS is None:
                break
            stats.add(batch, keep_BS, settings.exclude_special)
            if kept is not None:
                kept_bytes += batch.acts_BSD.numel() * batch.acts_BSD.element_size()
                if kept_bytes > REPLAY_BYTES:
                    kept = None  # too large to keep: the evaluation pass runs the model again
                else:
                    kept.append(batch)
    data = stats.hook_data(hook, source, settings, prepassed=True)
    return data if kept is None else replace(data, source=replaying(source, kept))


def replaying(source: DataSource, batches: list[ActivationBatch]) -> DataSource:
    """`source` whose `open_batches()` yields `batches` (what the pre-pass read) instead of computing them again;
    everything else (description, fingerprint, model, skipping to a batch) is the source's own."""
    return replace(source, open_batches=lambda: iter(batches))


def provisional_hook_data(hook: str, source: DataSource, settings: EvalSettings) -> HookData:
    """HookData known without reading the data (the source vouches for its fingerprint, tokens and labels);
    norms and counts are filled in by the evaluation pass itself."""
    nan = float("nan")
    labels = source.label_names or ()
    ctx = EvalContext(median_norm=nan, norm_q25=nan, norm_q75=nan, n_tokens=0, label_names=labels, seed=settings.seed)
    assert source.fingerprint is not None
    return HookData(hook, source, ctx, source.fingerprint, None, bool(source.has_tokens), labels, 0, 0, 0, False)


def data_stats(data: HookData) -> dict[str, JsonValue]:
    """The measured part of HookData, as JSON (for the store)."""
    c = data.ctx
    return {
        "median_norm": c.median_norm,
        "norm_q25": c.norm_q25,
        "norm_q75": c.norm_q75,
        "n_tokens": c.n_tokens,
        "n_tokens_read": data.n_tokens_read,
        "n_special_excluded": data.n_special_excluded,
        "n_norm_dropped": data.n_norm_dropped,
        "norm_limit": data.norm_limit,
    }


def with_data_stats(data: HookData, stats: dict[str, JsonValue]) -> HookData:
    """HookData with the measured fields restored from `data_stats` output."""
    ctx = replace(
        data.ctx,
        median_norm=float(stats["median_norm"]),
        norm_q25=float(stats["norm_q25"]),
        norm_q75=float(stats["norm_q75"]),
        n_tokens=int(stats["n_tokens"]),
    )
    limit = stats["norm_limit"]
    return replace(
        data,
        ctx=ctx,
        n_tokens_read=int(stats["n_tokens_read"]),
        n_special_excluded=int(stats["n_special_excluded"]),
        n_norm_dropped=int(stats["n_norm_dropped"]),
        norm_limit=None if limit is None else float(limit),
    )
