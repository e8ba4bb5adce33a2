"""The example store: a streaming collector of per-latent windows (bounded memory) and its result.

The runner calls `ExampleCollector.update` once per batch of whole sequences (windows need context) and
`finish` once at the end. Per tracked latent the collector keeps three fixed-size pools of candidate windows —
the highest activations, an importance-weighted sample (A-Res keys log(u)/act², i.e. ∝ activation²) and, for
the quantile sampler, a uniform sample of active tokens — plus one pool of uniformly random windows shared by
all latents. Within one sequence a pool takes at most `peaks_per_sequence` greedy peaks (the best of each
chunk of 2·window + 1 positions, then greedily) more than 2·window apart, so its windows never overlap. Memory
is O(n_latents × pool size × window length), whatever the number of tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from autointerp.config import AutointerpConfig
from autointerp.pools import BatchContext, Pool, RandomPool, Window, make_window, overlaps_any
from autointerp.status import Status
from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import token_key
from metrics.base import State, StateValue, token_priority

log = logging.getLogger(__name__)

# Log-spaced activation histogram (16 bins per decade) so firings above 1% of the final max can be counted
# without knowing the max while streaming.
_HIST_EDGES = torch.logspace(-6, 6, 193, dtype=torch.float64)


@dataclass(frozen=True)
class LatentExamples:
    """What autointerp needs about one latent. Held-out and random windows are never in `explain`."""

    latent: int
    firings: int
    """Tokens with activation > threshold (counted on a log histogram, so at most one 15%-wide bin low)."""
    max_act: float
    threshold: float
    """active_frac × max_act: a token is active above it."""
    explain: tuple[Window, ...] = ()
    held_out: tuple[Window, ...] = ()
    """Active windows reserved for scoring (top + importance-weighted)."""
    random: tuple[Window, ...] = ()
    """Uniformly random windows for scoring, labelled by their own activations."""
    status: Status = Status.OK
    """ok, insufficient_examples or dead."""
    reason: str = ""


class ExampleCollector:
    """Streams sequence-level codes and keeps, per latent, what the samplers need (bounded memory).

    Call `update(tokens_BS, codes_BSF, special_BS)` per batch, then `finish()` once.
    """

    def __init__(self, d_sae: int, latents: list[int] | None = None, config: AutointerpConfig | None = None) -> None:
        self.config = config or AutointerpConfig()
        self.d_sae = d_sae
        self.latents = list(range(d_sae)) if latents is None else sorted(set(latents))
        if any(not 0 <= i < d_sae for i in self.latents):
            raise EvalkitInputError("autointerp latents", f"latent ids must be in [0, {d_sae})")
        self._latent_idx = torch.tensor(self.latents, dtype=torch.long)
        c, n = self.config, len(self.latents)
        self._top = Pool(n, c.n_top_total, c.window_len)
        # Slack beyond n_iw_total: entries that overlap a top window or reach the top range are discarded at
        # finish.
        self._iw = Pool(n, c.n_iw_total + c.n_top_total + 8, c.window_len)
        self._uni = (
            Pool(n, 8 * c.n_quantiles + c.n_top_explain, c.window_len) if c.explain_sampler == "quantile" else None
        )
        self._random = RandomPool(c.random_pool, c.window_len, n)
        self._max_F = torch.zeros(n)
        self._hist_FH = torch.zeros(n, len(_HIST_EDGES) + 1, dtype=torch.long)
        self.n_seq = 0
        self.n_tokens = 0
        self._random_lists: tuple[list[list[int]], list[int], list[int]] | None = None

    @torch.no_grad()
    def update(
        self, tokens_BS: torch.Tensor, codes_BSF: torch.Tensor, special_BS: torch.Tensor, seq_offset: int | None = None
    ) -> None:
        """One batch of whole sequences; `seq_offset` is the index of its first sequence in the hook's data (default:
        right after the sequences seen so far). Sampling keys hash (sequence, position, latent), so a sequence is
        sampled the same whoever reads it and collectors of disjoint sequences merge exactly."""
        if codes_BSF.dim() != 3 or codes_BSF.shape[:2] != tokens_BS.shape or codes_BSF.shape[2] != self.d_sae:
            raise EvalkitInputError(
                "autointerp",
                f"codes {tuple(codes_BSF.shape)} do not match tokens {tuple(tokens_BS.shape)} and d_sae {self.d_sae}",
            )
        special_BS = special_BS.bool().cpu()
        codes_BSF = codes_BSF.detach().float().cpu()
        if len(self.latents) != self.d_sae:
            codes_BSF = codes_BSF[..., self._latent_idx]
        # Special tokens never count; negative codes (if a variant emits any) are inactive.
        codes_BSF = codes_BSF.masked_fill(special_BS[..., None], 0.0).clamp(min=0.0)
        tokens_BS = tokens_BS.long().cpu().masked_fill(special_BS, -1)
        b_N, s_N, f_N = (codes_BSF > 0).nonzero(as_tuple=True)
        offset = self.n_seq if seq_offset is None else seq_offset
        ctx = BatchContext(tokens_BS, codes_BSF, self.config.window, offset, b_N, s_N, f_N, codes_BSF[b_N, s_N, f_N])
        self._update_stats(ctx)
        peaks = self.config.peaks_per_sequence
        self._top.merge(ctx.v_N, ctx, peaks)
        keys_N = token_key(b_N + offset, s_N)
        latent_N = self._latent_idx[f_N]
        u_N = token_priority(keys_N, self.config.seed, 2 * latent_N + 1).clamp_min(2.0**-60)
        self._iw.merge((torch.log(u_N) / ctx.v_N.double().square()).float(), ctx, peaks)  # A-Res: ∝ activation²
        if self._uni is not None:
            self._uni.merge(token_priority(keys_N, self.config.seed, 2 * latent_N + 2).float(), ctx, peaks)
        self._random.offer(ctx, special_BS, self.config.seed)
        self.n_seq = max(self.n_seq, offset + tokens_BS.shape[0])
        self.n_tokens += int((~special_BS).sum())

    def _update_stats(self, ctx: BatchContext) -> None:
        self._max_F = self._max_F.scatter_reduce(0, ctx.f_N, ctx.v_N, "amax")
        bins_N = torch.bucketize(ctx.v_N.double(), _HIST_EDGES)
        self._hist_FH.view(-1).index_add_(0, ctx.f_N * self._hist_FH.shape[1] + bins_N, torch.ones_like(bins_N))

    def state_dict(self) -> State:
        """The collector's state (metrics.base.StreamingMetric's protocol): pools, maxima, histograms, counters."""
        state: State = {"max_F": self._max_F.clone(), "hist_FH": self._hist_FH.clone()}
        state |= {"n_seq": self.n_seq, "n_tokens": self.n_tokens}
        for prefix, pool in self._pools():
            state |= pool.state_dict(prefix)
        return state

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        max_F, hist_FH = state["max_F"], state["hist_FH"]
        assert isinstance(max_F, torch.Tensor) and isinstance(hist_FH, torch.Tensor)
        self._max_F, self._hist_FH = max_F.float().clone(), hist_FH.long().clone()
        self.n_seq, self.n_tokens = int(state["n_seq"]), int(state["n_tokens"])
        for prefix, pool in self._pools():
            pool.load_state_dict(state, prefix)

    def merge(self, other: ExampleCollector) -> None:
        """Fold in a collector (same d_sae, latents and config) that saw other sequences."""
        self._max_F = torch.maximum(self._max_F, other._max_F)
        self._hist_FH = self._hist_FH + other._hist_FH
        self.n_seq = max(self.n_seq, other.n_seq)
        self.n_tokens += other.n_tokens
        for (_, pool), (_, other_pool) in zip(self._pools(), other._pools(), strict=True):
            pool.absorb(other_pool)  # type: ignore[arg-type]

    def _pools(self) -> list[tuple[str, Pool | RandomPool]]:
        pools: list[tuple[str, Pool | RandomPool]] = [("top.", self._top), ("iw.", self._iw)]
        if self._uni is not None:
            pools.append(("uni.", self._uni))
        return [*pools, ("random.", self._random)]

    def finish(self) -> dict[int, LatentExamples]:
        """Per tracked latent: explainer windows, held-out scoring windows, random windows, firing count."""
        self._random_lists = None
        return {latent: self._finish_one(i, latent) for i, latent in enumerate(self.latents)}

    def _firings(self, i: int, threshold: float) -> int:
        lower_edges = torch.cat([torch.zeros(1, dtype=torch.float64), _HIST_EDGES])
        return int(self._hist_FH[i][lower_edges > threshold].sum()) if threshold > 0 else int(self._hist_FH[i].sum())

    def _finish_one(self, i: int, latent: int) -> LatentExamples:
        c = self.config
        max_act = float(self._max_F[i])
        threshold = c.active_frac * max_act
        if max_act <= 0:
            return LatentExamples(latent, 0, 0.0, 0.0, status=Status.DEAD, reason="never fired")
        firings = self._firings(i, threshold)
        top = [w for _, w in self._top.windows_of(i, "top") if w.max_act > threshold]
        top.sort(key=lambda w: -w.max_act)
        top = top[: c.n_top_total]
        if firings < c.min_firings or len(top) < c.n_top_total:
            reason = (
                f"{firings} firings (< {c.min_firings})"
                if firings < c.min_firings
                else f"only {len(top)} non-overlapping top windows (< {c.n_top_total})"
            )
            return LatentExamples(
                latent, firings, max_act, threshold, status=Status.INSUFFICIENT_EXAMPLES, reason=reason
            )
        rng = np.random.default_rng([c.seed, latent, 1])
        held_top_idx = set(rng.choice(len(top), size=c.n_top_score, replace=False).tolist())
        floor = min(w.max_act for w in top)
        iw = [
            w
            for _, w in self._iw.windows_of(i, "iw")
            if threshold < w.max_act < floor and not overlaps_any(w, top, c.window)
        ]
        iw = iw[: c.n_iw_total]
        held_iw_idx = set(rng.choice(len(iw), size=min(c.n_iw_score, len(iw)), replace=False).tolist())
        held_out = [w for j, w in enumerate(top) if j in held_top_idx] + [
            w for j, w in enumerate(iw) if j in held_iw_idx
        ]
        if self._uni is not None:
            explain = self._quantile_windows(i, threshold, held_out, rng)
        else:
            explain = [w for j, w in enumerate(top) if j not in held_top_idx] + [
                w for j, w in enumerate(iw) if j not in held_iw_idx
            ]
        random = self._random_windows(i, [*explain, *held_out], rng)
        return LatentExamples(latent, firings, max_act, threshold, tuple(explain), tuple(held_out), tuple(random))

    def _quantile_windows(
        self, i: int, threshold: float, held_out: list[Window], rng: np.random.Generator
    ) -> list[Window]:
        """Explainer windows spread evenly over activation quantiles (delphi-style), highest first."""
        c = self.config
        pool = [
            w
            for _, w in self._uni.windows_of(i, "quantile")  # type: ignore[union-attr]
            if w.max_act > threshold and not overlaps_any(w, held_out, c.window)
        ]
        pool.sort(key=lambda w: -w.max_act)
        bins = [list(b) for b in np.array_split(np.arange(len(pool)), c.n_quantiles) if len(b)]
        for b in bins:
            rng.shuffle(b)
        chosen: list[Window] = []
        while len(chosen) < c.n_top_explain + c.n_iw_explain and any(bins):
            for b in bins:
                if b and len(chosen) < c.n_top_explain + c.n_iw_explain:
                    chosen.append(pool[b.pop()])
        return chosen

    def _random_windows(self, i: int, taken: list[Window], rng: np.random.Generator) -> list[Window]:
        c = self.config
        candidates = []
        pool = self._random
        if self._random_lists is None:  # the pool's tokens and places, as lists once for every latent
            self._random_lists = (pool.tok_RW.tolist(), pool.seq_R.tolist(), pool.pos_R.tolist())
        tok_RW, seq_R, pos_R = self._random_lists
        codes_RW = pool.codes_RWF[:, :, i].tolist()
        for r in rng.permutation(pool.key_R.shape[0]).tolist():
            if int(seq_R[r]) < 0:
                continue
            w = make_window(tok_RW[r], codes_RW[r], int(seq_R[r]), int(pos_R[r]), "random")
            if not overlaps_any(w, taken, c.window):
                candidates.append(w)
            if len(candidates) == c.n_random_score:
                break
        return candidates
