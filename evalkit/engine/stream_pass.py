"""The evaluation pass over one hook's data: every batch is read once and serves every SAE and stream metric.

Per batch and SAE, f = encode(x) and x̂ = decode(f) are computed once, at the evaluation tokens, into a
SaeBatch shared by all of that SAE's metrics and by the observers (the autointerp example collector). When a
downstream metric is pending, the clean and zero-ablated runs are done once per batch and the x̂-spliced run
once per SAE.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from evalkit.core.batch import ActivationBatch
from evalkit.core.faults import fault_point
from evalkit.core.heap import release_free_heap
from evalkit.core.progress import Progress
from evalkit.core.records import ResultKey, SaeBatch, token_key
from evalkit.engine.checkpoint import PassCheckpointer, PassResume, checkpointable, load_states
from evalkit.engine.passes import HookData, PassStats, TokenFilter, check_batch
from evalkit.engine.runconfig import EvalSettings, SaeLike
from evalkit.engine.splice import PatchScorer, Splicer
from metrics.base import StreamingMetric
from metrics.downstream import EXTRA_KEYS
from metrics.jackknife import BLOCK_KEY, block_index, seqs_per_block

log = logging.getLogger(__name__)

SEQ_INDEX_KEY = "seq_index"
"""SaeBatch.extras key: index (within the pass) of the sequence each kept token comes from."""


class BatchObserver(Protocol):
    """Hook point for the autointerp example collector: sees every SaeBatch of the SAEs it wants."""

    def wants(self, sae_id: str) -> bool: ...

    def observe(self, sae_id: str, batch: SaeBatch) -> None: ...


@dataclass(frozen=True)
class TokenShard:
    """A contiguous range of a hook's batches, with what a pass starting there must know (from a pre-pass)."""

    start: int
    stop: int
    seq_offset: int
    """Sequences in the batches before `start`: the global index of the shard's first sequence."""
    remaining: int | None
    """Evaluation tokens the budget (`--tokens`) still allows at `start`; None = no budget."""


@dataclass
class SaeState:
    """One SAE's pending accumulators during a pass."""

    handle: SaeLike
    pending: dict[str, tuple[ResultKey, StreamingMetric]]
    wants_downstream: bool


@torch.no_grad()
def stream_pass(
    data: HookData,
    states: list[SaeState],
    members: Sequence[SaeLike],
    settings: EvalSettings,
    observers: Sequence[BatchObserver],
    shard: TokenShard | None = None,
    checkpointer: PassCheckpointer | None = None,
) -> PassStats:
    """Feed every pending accumulator of `states` (over `shard` only, when given); returns what the pass
    measured about the data.

    With a `checkpointer` (whole passes only), the accumulators' and observers' states are saved as it asks, and
    a pass whose checkpoint exists continues from it (stats.resumed_at_batch) without reading the earlier
    batches again."""
    splicer = Splicer(data.source.model, data.hook) if any(st.wants_downstream for st in states) else None
    token_filter = TokenFilter(settings, data.norm_limit)
    stats = PassStats()
    accs = {f"{st.handle.content_hash}/{name}": acc for st in states for name, (_, acc) in st.pending.items()}
    watching = [o for o in observers if any(o.wants(st.handle.sae_id) for st in states)]
    if shard is not None or (checkpointer is not None and not checkpointable([*accs.values(), *watching])):
        checkpointer = None
    resume = checkpointer.load() if checkpointer is not None else None
    if resume is not None and len(resume.observers) == len(watching) and load_states(accs, resume.accumulators):
        for obs, obs_state in zip(watching, resume.observers, strict=True):
            obs.load_state_dict(obs_state)  # type: ignore[attr-defined]
        stats.load_state_dict(resume.stats)
        stats.resumed_at_batch = resume.next_batch
        shard = TokenShard(resume.next_batch, 1 << 62, resume.n_seq_seen, resume.remaining)
        log.info("resuming the pass over %s from its checkpoint at batch %d", data.hook, resume.next_batch)
    source_batches = data.source.open_batches()
    if shard is not None:
        token_filter.remaining = shard.remaining
        source_batches = _shard_batches(data, shard)
    start = 0 if shard is None else shard.start
    n_seq_seen = 0 if shard is None else shard.seq_offset
    # Tokens still to read: known from the pre-pass for a whole pass (less what a resumed checkpoint already read).
    whole = data.prepassed and data.n_tokens_read > 0 and (shard is None or resume is not None)
    total = max(data.n_tokens_read - stats.n_read, 0) if whole else None
    with Progress(total, f"evaluating {data.hook}", "tokens") as progress:
        _batch_loop(
            data,
            states,
            members,
            settings,
            observers,
            source_batches,
            start,
            n_seq_seen,
            token_filter,
            stats,
            splicer,
            checkpointer,
            accs,
            watching,
            progress,
        )
    return stats


def _batch_loop(
    data: HookData,
    states: list[SaeState],
    members: Sequence[SaeLike],
    settings: EvalSettings,
    observers: Sequence[BatchObserver],
    batches: Iterable[ActivationBatch],
    start: int,
    n_seq_seen: int,
    token_filter: TokenFilter,
    stats: PassStats,
    splicer: Splicer | None,
    checkpointer: PassCheckpointer | None,
    accs: dict[str, StreamingMetric],
    watching: list[BatchObserver],
    progress: Progress,
) -> None:
    """The pass's batches: update every accumulator and observer, count progress, checkpoint when due."""
    for i, batch in enumerate(batches, start=start):
        if not data.prepassed:
            check_batch(batch, i, data.source, members)
        keep_BS = token_filter.keep(batch)
        if keep_BS is None:
            break
        n_read_before = stats.n_read
        stats.add(batch, keep_BS, settings.exclude_special)
        stats.n_batches_read += 1
        progress.update(stats.n_read - n_read_before)
        n_seq_seen += keep_BS.shape[0]
        if keep_BS.any():
            known = data.n_tokens_read if data.prepassed else 0
            _update_all(states, batch, keep_BS, n_seq_seen, splicer, observers, settings, known)
        release_free_heap()  # the batch's freed tensors would otherwise stay resident (core/heap.py)
        fault_point("pass")
        if checkpointer is not None and checkpointer.due(i + 1):
            checkpointer.save(
                PassResume(
                    i + 1,
                    n_seq_seen,
                    token_filter.remaining,
                    stats.state_dict(),
                    {k: acc.state_dict() for k, acc in accs.items()},
                    [o.state_dict() for o in watching],  # type: ignore[attr-defined]
                )
            )


def _update_all(
    states: list[SaeState],
    batch: ActivationBatch,
    keep_BS: torch.Tensor,
    n_seq_seen: int,
    splicer: Splicer | None,
    observers: Sequence[BatchObserver],
    settings: EvalSettings,
    n_tokens_read: int = 0,
) -> None:
    """`n_tokens_read`: tokens the pass will read (from the pre-pass; 0 = not known), for the jackknife's runs."""
    n_seq, seq_len = keep_BS.shape
    acts_BSD = batch.acts_BSD.float()
    scorer, base_extras = _clean_and_zero(splicer, batch.tokens_BS, acts_BSD, keep_BS) if splicer else (None, {})
    # The sequence (within the pass) of each kept token: the autointerp observer rebuilds windows.
    seq_BS = torch.arange(n_seq_seen - n_seq, n_seq_seen, device=keep_BS.device)[:, None]
    base_extras[SEQ_INDEX_KEY] = seq_BS.expand(n_seq, seq_len)[keep_BS]
    if settings.stderr_blocks >= 2:
        # Runs of whole sequences sized from the settings (sources fill batches with batch_size // seq_len
        # sequences) and the pre-pass's token count, so every token shard of a split run cuts them the same way.
        seqs_per_batch = max(1, settings.batch_size // seq_len)
        n_batches = -(-n_tokens_read // (seqs_per_batch * seq_len))
        run_len = seqs_per_block(seqs_per_batch, settings.stderr_blocks, n_batches)
        base_extras[BLOCK_KEY] = block_index(base_extras[SEQ_INDEX_KEY], run_len, settings.stderr_blocks)
    for st in states:
        _update_sae(st, batch, acts_BSD, keep_BS, splicer, scorer, base_extras, observers)


def _shard_batches(data: HookData, shard: TokenShard) -> Iterator[ActivationBatch]:
    """The shard's batches: from the source's own `open_batches_from` when it can skip without computing (a
    model source skips the model's forward pass), else read and dropped."""
    if data.source.open_batches_from is not None:
        batches = iter(data.source.open_batches_from(shard.start))
    else:
        batches = itertools.islice(data.source.open_batches(), shard.start, None)
    return itertools.islice(batches, shard.stop - shard.start)


def _clean_and_zero(
    splicer: Splicer, tokens_BS: torch.Tensor | None, acts_BSD: torch.Tensor, keep_BS: torch.Tensor
) -> tuple[PatchScorer, dict[str, torch.Tensor]]:
    assert tokens_BS is not None  # guaranteed by the 'tokens' requirement
    scorer = PatchScorer(splicer.logits(tokens_BS, acts_BSD), tokens_BS, keep_BS)
    # Zero ablation replaces every position, as sae-lens does; from a residual-stream hook every sequence then
    # has the same logits, so one sequence is run (engine/splice.py).
    zero_logits = splicer.zero_ablated_logits(tokens_BS, acts_BSD)
    if splicer.zero_rows_shared:
        ce_zero_T, kl_zero_T = scorer.ce_kl_same_rows(zero_logits)
    else:
        ce_zero_T, kl_zero_T = scorer.ce_kl(zero_logits)
    return scorer, {"ce_clean": scorer.clean_ce(), "ce_zero": ce_zero_T, "kl_zero": kl_zero_T}


def _update_sae(
    st: SaeState,
    batch: ActivationBatch,
    acts_BSD: torch.Tensor,
    keep_BS: torch.Tensor,
    splicer: Splicer | None,
    scorer: PatchScorer | None,
    base_extras: dict[str, torch.Tensor],
    observers: Sequence[BatchObserver],
) -> None:
    sae = st.handle.sae
    x_TD = acts_BSD[keep_BS]
    f_TF = sae.encode(x_TD.to(sae.device))
    x_hat_TD = sae.decode(f_TF).float().to(x_TD.device)
    extras: dict[str, torch.Tensor] = {k: base_extras[k] for k in (SEQ_INDEX_KEY, BLOCK_KEY) if k in base_extras}
    if st.wants_downstream and splicer is not None and scorer is not None:
        # Splice x̂ at evaluation tokens only; excluded tokens (BOS, outliers) keep their activations, as
        # sae-lens does.
        spliced_BSD = acts_BSD.clone()
        spliced_BSD[keep_BS] = x_hat_TD
        extras.update({k: v for k, v in base_extras.items() if k in EXTRA_KEYS})
        extras["ce_sae"], extras["kl_sae"] = scorer.ce_kl(splicer.logits(batch.tokens_BS, spliced_BSD))
    positions_T = batch.positions_BS[keep_BS]
    sae_batch = SaeBatch(
        sae=sae,
        x_TD=x_TD,
        x_hat_TD=x_hat_TD,
        f_TF=f_TF.float(),
        positions_T=positions_T,
        tokens_T=None if batch.tokens_BS is None else batch.tokens_BS[keep_BS],
        labels_TL=None if batch.labels_BSL is None else batch.labels_BSL[keep_BS],
        extras=extras,
        token_keys_T=token_key(base_extras[SEQ_INDEX_KEY], positions_T),
    )
    for _, acc in st.pending.values():
        acc.update(sae_batch)
    for obs in observers:
        if obs.wants(st.handle.sae_id):
            obs.observe(st.handle.sae_id, sae_batch)
