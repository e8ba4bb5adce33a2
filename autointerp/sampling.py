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
from autointerp.status import Status
from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import token_key
from metrics.base import State, StateValue, token_priority

log = logging.getLogger(__name__)

_NEG_INF = float("-inf")
# Log-spaced activation histogram (16 bins per decade) so firings above 1% of the final max can be counted
# without
# knowing the max while streaming.
_HIST_EDGES = torch.logspace(-6, 6, 193, dtype=torch.float64)


@dataclass(frozen=True)
class Window:
    """A token window around one activating (or random) token; special and out-of-sequence tokens removed."""

    seq: int
    """Global sequence index (order in which the collector saw the sequences)."""
    center: int
    """Position of the centre token within its sequence."""
    tokens: tuple[int, ...]
    acts: tuple[float, ...]
    """The latent's activation on each token."""
    kind: str
    """Which sampler produced it: top, iw, quantile or random."""

    def overlaps(self, other: Window, half_width: int) -> bool:
        return self.seq == other.seq and abs(self.center - other.center) <= 2 * half_width

    def active(self, threshold: float) -> tuple[bool, ...]:
        return tuple(a > threshold for a in self.acts)

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)


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


def _best_k(key_FN: torch.Tensor, seq_FN: torch.Tensor, pos_FN: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [F, k] of the k best candidates per row: key descending, then sequence, then position ascending.

    A total order on distinct windows, so a pool never depends on the order its candidates arrived in: pools of
    two halves of a stream merge into exactly the pool of the whole stream."""
    order = pos_FN.argsort(dim=1, stable=True)
    order = order.gather(1, seq_FN.gather(1, order).argsort(dim=1, stable=True))
    order = order.gather(1, key_FN.gather(1, order).argsort(dim=1, descending=True, stable=True))
    return order[:, :k]


class _Pool:
    """Best-k candidate windows per latent by a sampling key, with their tokens and activations."""

    FIELDS = ("key_FK", "act_FK", "seq_FK", "pos_FK", "tok_FKW", "wact_FKW")

    def __init__(self, n_latents: int, k: int, window_len: int) -> None:
        self.key_FK = torch.full((n_latents, k), _NEG_INF)
        self.act_FK = torch.zeros(n_latents, k)
        self.seq_FK = torch.full((n_latents, k), -1, dtype=torch.long)
        self.pos_FK = torch.zeros(n_latents, k, dtype=torch.long)
        self.tok_FKW = torch.full((n_latents, k, window_len), -1, dtype=torch.long)
        self.wact_FKW = torch.zeros(n_latents, k, window_len)

    def merge(self, key_N: torch.Tensor, ctx: _BatchContext, peaks: int) -> None:
        """Offer the batch's active entries under `key_N` (higher is better); keep the best k per latent."""
        cval_FBC, cpos_FBC = ctx.chunk_best(key_N)
        key_FC, pos_FC = _greedy_peaks(cval_FBC, cpos_FBC, peaks, ctx.half_width)
        n_keep = self.key_FK.shape[1]
        b_FC = torch.arange(key_FC.shape[1]).expand_as(key_FC) // (key_FC.shape[1] // cval_FBC.shape[1])
        seq_FC = (b_FC + ctx.seq_offset).masked_fill(key_FC == _NEG_INF, -1)  # candidates: [sequence, peak]
        idx = _best_k(
            torch.cat([self.key_FK, key_FC], dim=1),
            torch.cat([self.seq_FK, seq_FC], dim=1),
            torch.cat([self.pos_FK, pos_FC], dim=1),
            n_keep,
        )
        new_key = torch.cat([self.key_FK, key_FC], dim=1).gather(1, idx)
        from_old = idx < n_keep
        old_idx = idx.clamp(max=n_keep - 1)
        new_idx = (idx - n_keep).clamp(min=0)
        b_FK = b_FC.gather(1, new_idx)
        pos_new_FK = pos_FC.gather(1, new_idx)
        f_FK = torch.arange(cval_FBC.shape[0])[:, None].expand_as(idx)
        tok_new, wact_new = ctx.windows(b_FK, pos_new_FK, f_FK)
        old_w = old_idx[..., None].expand(-1, -1, self.tok_FKW.shape[2])
        self.tok_FKW = torch.where(from_old[..., None], self.tok_FKW.gather(1, old_w), tok_new)
        self.wact_FKW = torch.where(from_old[..., None], self.wact_FKW.gather(1, old_w), wact_new)
        act_new = ctx.codes_BSF[b_FK, pos_new_FK, f_FK]
        self.act_FK = torch.where(from_old, self.act_FK.gather(1, old_idx), act_new)
        self.seq_FK = torch.where(from_old, self.seq_FK.gather(1, old_idx), b_FK + ctx.seq_offset)
        self.seq_FK = self.seq_FK.masked_fill(new_key == _NEG_INF, -1)
        self.pos_FK = torch.where(from_old, self.pos_FK.gather(1, old_idx), pos_new_FK)
        self.key_FK = new_key

    def absorb(self, other: _Pool) -> None:
        """Keep the best k of both pools' candidates (a pool over both streams)."""
        joined = {name: torch.cat([getattr(self, name), getattr(other, name)], dim=1) for name in self.FIELDS}
        idx = _best_k(joined["key_FK"], joined["seq_FK"], joined["pos_FK"], self.key_FK.shape[1])
        for name, value in joined.items():
            index = idx if value.dim() == 2 else idx[..., None].expand(-1, -1, value.shape[2])
            setattr(self, name, value.gather(1, index))

    def state_dict(self, prefix: str) -> State:
        return {prefix + name: getattr(self, name).clone() for name in self.FIELDS}

    def load_state_dict(self, state: Mapping[str, StateValue], prefix: str) -> None:
        for name in self.FIELDS:
            value = state[prefix + name]
            assert isinstance(value, torch.Tensor)
            setattr(self, name, value.to(getattr(self, name).dtype).clone())

    def windows_of(self, i: int, kind: str) -> list[tuple[float, Window]]:
        """(key, window) for latent row i, valid entries only, best key first."""
        keys, seqs, poss = self.key_FK[i].tolist(), self.seq_FK[i].tolist(), self.pos_FK[i].tolist()
        toks, wacts = self.tok_FKW[i].tolist(), self.wact_FKW[i].tolist()
        return [
            (keys[j], _make_window(toks[j], wacts[j], seqs[j], poss[j], kind)) for j in range(len(keys)) if seqs[j] >= 0
        ]


def _make_window(tok_W: list[int], wact_W: list[float], seq: int, center: int, kind: str) -> Window:
    keep = [j for j, t in enumerate(tok_W) if t >= 0]
    return Window(seq, center, tuple(tok_W[j] for j in keep), tuple(wact_W[j] for j in keep), kind)


def _greedy_peaks(
    cval_FBC: torch.Tensor, cpos_FBC: torch.Tensor, peaks: int, half_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `peaks` best chunk candidates per (latent, sequence), each more than 2·half_width from the
    others, so their windows never overlap."""
    keys, poss = [], []
    for _ in range(min(peaks, cval_FBC.shape[2])):
        val_FB, c_FB = cval_FBC.max(dim=2)
        pos_FB = cpos_FBC.gather(2, c_FB[..., None])[..., 0]
        keys.append(val_FB)
        poss.append(pos_FB)
        cval_FBC = cval_FBC.masked_fill((cpos_FBC - pos_FB[..., None]).abs() <= 2 * half_width, _NEG_INF)
    return torch.stack(keys, dim=-1).flatten(1), torch.stack(poss, dim=-1).flatten(1)


@dataclass
class _BatchContext:
    """One batch: its tokens and codes, and its active entries (latent f, sequence b, position s, value v).

    Pools only look at active entries, so an update costs O(active entries), not O(tokens × latents).
    """

    tokens_BS: torch.Tensor
    codes_BSF: torch.Tensor
    half_width: int
    seq_offset: int
    b_N: torch.Tensor
    s_N: torch.Tensor
    f_N: torch.Tensor
    v_N: torch.Tensor

    def chunk_best(self, key_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best key and its position per (latent, sequence, chunk of 2·half_width + 1 positions)."""
        n_b, n_s, n_f = self.codes_BSF.shape
        chunk = 2 * self.half_width + 1
        n_c = -(-n_s // chunk)
        cell_N = (self.f_N * n_b + self.b_N) * n_c + self.s_N // chunk
        cval = torch.full((n_f * n_b * n_c,), _NEG_INF).scatter_reduce(0, cell_N, key_N, "amax")
        winner_N = key_N == cval[cell_N]
        cpos = torch.zeros(n_f * n_b * n_c, dtype=torch.long)
        cpos[cell_N[winner_N]] = self.s_N[winner_N]
        return cval.view(n_f, n_b, n_c), cpos.view(n_f, n_b, n_c)

    def windows(
        self, b_K: torch.Tensor, pos_K: torch.Tensor, f_K: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (-1 outside the sequence or special) and codes of the windows centred at (b, pos):
        [..., W] for latent f_K, or [..., W, F] for all latents when f_K is None."""
        n_s = self.tokens_BS.shape[1]
        p_KW = pos_K[..., None] + torch.arange(-self.half_width, self.half_width + 1)
        inside_KW = (p_KW >= 0) & (p_KW < n_s)
        p_KW = p_KW.clamp(0, n_s - 1)
        b_KW = b_K[..., None].expand_as(p_KW)
        tok_KW = self.tokens_BS[b_KW, p_KW].masked_fill(~inside_KW, -1)
        if f_K is None:
            return tok_KW, self.codes_BSF[b_KW, p_KW] * inside_KW[..., None]
        return tok_KW, self.codes_BSF[b_KW, p_KW, f_K[..., None].expand_as(p_KW)] * inside_KW


class _RandomPool:
    """Uniformly random windows shared by all latents: one random non-special token per sequence competes; the
    best `size` by (priority, sequence) are kept, with every tracked latent's codes over the window."""

    FIELDS = ("key_R", "seq_R", "pos_R", "tok_RW", "codes_RWF")

    def __init__(self, size: int, window_len: int, n_latents: int) -> None:
        self.key_R = torch.full((size,), _NEG_INF, dtype=torch.float64)
        self.seq_R = torch.full((size,), -1, dtype=torch.long)
        self.pos_R = torch.zeros(size, dtype=torch.long)
        self.tok_RW = torch.full((size, window_len), -1, dtype=torch.long)
        self.codes_RWF = torch.zeros(size, window_len, n_latents)

    def offer(self, ctx: _BatchContext, special_BS: torch.Tensor, seed: int) -> None:
        n_b, n_s = special_BS.shape
        seq_BS = torch.arange(ctx.seq_offset, ctx.seq_offset + n_b)[:, None].expand(n_b, n_s)
        pos_BS = torch.arange(n_s)[None, :].expand(n_b, n_s)
        u_BS = token_priority(token_key(seq_BS.flatten(), pos_BS.flatten()), seed, RANDOM_STREAM).view(n_b, n_s)
        key_B, pos_B = u_BS.masked_fill(special_BS, _NEG_INF).max(dim=1)
        tok_BW, codes_BWF = ctx.windows(torch.arange(n_b), pos_B)
        seq_B = (torch.arange(n_b) + ctx.seq_offset).masked_fill(key_B == _NEG_INF, -1)
        self._keep({"key_R": key_B, "seq_R": seq_B, "pos_R": pos_B, "tok_RW": tok_BW, "codes_RWF": codes_BWF})

    def absorb(self, other: _RandomPool) -> None:
        self._keep({name: getattr(other, name) for name in self.FIELDS})

    def _keep(self, new: dict[str, torch.Tensor]) -> None:
        joined = {name: torch.cat([getattr(self, name), new[name]]) for name in self.FIELDS}
        idx = _best_k(joined["key_R"][None], joined["seq_R"][None], joined["pos_R"][None], self.key_R.shape[0])[0]
        for name, value in joined.items():
            setattr(self, name, value[idx])

    def state_dict(self, prefix: str) -> State:
        return {prefix + name: getattr(self, name).clone() for name in self.FIELDS}

    def load_state_dict(self, state: Mapping[str, StateValue], prefix: str) -> None:
        for name in self.FIELDS:
            value = state[prefix + name]
            assert isinstance(value, torch.Tensor)
            setattr(self, name, value.to(getattr(self, name).dtype).clone())


RANDOM_STREAM = 0
"""token_priority stream of the random pool; latent i's importance-weighted and uniform samplers use 2i+1, 2i+2."""


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
        self._top = _Pool(n, c.n_top_total, c.window_len)
        # Slack beyond n_iw_total: entries that overlap a top window or reach the top range are discarded at
        # finish.
        self._iw = _Pool(n, c.n_iw_total + c.n_top_total + 8, c.window_len)
        self._uni = (
            _Pool(n, 8 * c.n_quantiles + c.n_top_explain, c.window_len) if c.explain_sampler == "quantile" else None
        )
        self._random = _RandomPool(c.random_pool, c.window_len, n)
        self._max_F = torch.zeros(n)
        self._hist_FH = torch.zeros(n, len(_HIST_EDGES) + 1, dtype=torch.long)
        self.n_seq = 0
        self.n_tokens = 0

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
        ctx = _BatchContext(tokens_BS, codes_BSF, self.config.window, offset, b_N, s_N, f_N, codes_BSF[b_N, s_N, f_N])
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

    def _update_stats(self, ctx: _BatchContext) -> None:
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

    def _pools(self) -> list[tuple[str, _Pool | _RandomPool]]:
        pools: list[tuple[str, _Pool | _RandomPool]] = [("top.", self._top), ("iw.", self._iw)]
        if self._uni is not None:
            pools.append(("uni.", self._uni))
        return [*pools, ("random.", self._random)]

    def finish(self) -> dict[int, LatentExamples]:
        """Per tracked latent: explainer windows, held-out scoring windows, random windows, firing count."""
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
            if threshold < w.max_act < floor and not any(w.overlaps(t, c.window) for t in top)
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
            if w.max_act > threshold and not any(w.overlaps(h, c.window) for h in held_out)
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
        for r in rng.permutation(pool.key_R.shape[0]).tolist():
            if int(pool.seq_R[r]) < 0:
                continue
            w = _make_window(
                pool.tok_RW[r].tolist(),
                pool.codes_RWF[r, :, i].tolist(),
                int(pool.seq_R[r]),
                int(pool.pos_R[r]),
                "random",
            )
            if not any(w.overlaps(t, c.window) for t in taken):
                candidates.append(w)
            if len(candidates) == c.n_random_score:
                break
        return candidates
