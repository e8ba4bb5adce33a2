"""Fixed-size pools of candidate windows, the building blocks of the example store (autointerp.sampling).

A pool keeps the best k candidates per latent under a sampling key, in a total order (key descending, then
sequence, then position), so pools over two halves of a stream merge into exactly the pool of the whole stream.
Updates look only at a batch's active entries: O(active entries), not O(tokens x latents).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from evalkit.core.records import token_key
from metrics.base import State, StateValue, token_priority

NEG_INF = float("-inf")


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


def best_k(key_FN: torch.Tensor, seq_FN: torch.Tensor, pos_FN: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [F, k] of the k best candidates per row: key descending, then sequence, then position ascending.

    A total order on distinct windows, so a pool never depends on the order its candidates arrived in: pools of
    two halves of a stream merge into exactly the pool of the whole stream."""
    order = pos_FN.argsort(dim=1, stable=True)
    order = order.gather(1, seq_FN.gather(1, order).argsort(dim=1, stable=True))
    order = order.gather(1, key_FN.gather(1, order).argsort(dim=1, descending=True, stable=True))
    return order[:, :k]


class _TensorFields:
    """State of a pool: the tensors named in FIELDS, saved and restored under a key prefix."""

    FIELDS: tuple[str, ...] = ()

    def state_dict(self, prefix: str) -> State:
        return {prefix + name: getattr(self, name).clone() for name in self.FIELDS}

    def load_state_dict(self, state: Mapping[str, StateValue], prefix: str) -> None:
        for name in self.FIELDS:
            value = state[prefix + name]
            assert isinstance(value, torch.Tensor)
            setattr(self, name, value.to(getattr(self, name).dtype).clone())


class Pool(_TensorFields):
    """Best-k candidate windows per latent by a sampling key, with their tokens and activations."""

    FIELDS = ("key_FK", "act_FK", "seq_FK", "pos_FK", "tok_FKW", "wact_FKW")

    def __init__(self, n_latents: int, k: int, window_len: int) -> None:
        self.key_FK = torch.full((n_latents, k), NEG_INF)
        self.act_FK = torch.zeros(n_latents, k)
        self.seq_FK = torch.full((n_latents, k), -1, dtype=torch.long)
        self.pos_FK = torch.zeros(n_latents, k, dtype=torch.long)
        self.tok_FKW = torch.full((n_latents, k, window_len), -1, dtype=torch.long)
        self.wact_FKW = torch.zeros(n_latents, k, window_len)

    def merge(self, key_N: torch.Tensor, ctx: BatchContext, peaks: int) -> None:
        """Offer the batch's active entries under `key_N` (higher is better); keep the best k per latent."""
        cval_FBC, cpos_FBC = ctx.chunk_best(key_N)
        key_FC, pos_FC = greedy_peaks(cval_FBC, cpos_FBC, peaks, ctx.half_width)
        n_keep = self.key_FK.shape[1]
        b_FC = torch.arange(key_FC.shape[1]).expand_as(key_FC) // (key_FC.shape[1] // cval_FBC.shape[1])
        seq_FC = (b_FC + ctx.seq_offset).masked_fill(key_FC == NEG_INF, -1)  # candidates: [sequence, peak]
        idx = best_k(
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
        self.seq_FK = self.seq_FK.masked_fill(new_key == NEG_INF, -1)
        self.pos_FK = torch.where(from_old, self.pos_FK.gather(1, old_idx), pos_new_FK)
        self.key_FK = new_key

    def absorb(self, other: Pool) -> None:
        """Keep the best k of both pools' candidates (a pool over both streams)."""
        joined = {name: torch.cat([getattr(self, name), getattr(other, name)], dim=1) for name in self.FIELDS}
        idx = best_k(joined["key_FK"], joined["seq_FK"], joined["pos_FK"], self.key_FK.shape[1])
        for name, value in joined.items():
            index = idx if value.dim() == 2 else idx[..., None].expand(-1, -1, value.shape[2])
            setattr(self, name, value.gather(1, index))

    def windows_of(self, i: int, kind: str) -> list[tuple[float, Window]]:
        """(key, window) for latent row i, valid entries only, best key first."""
        keys, seqs, poss = self.key_FK[i].tolist(), self.seq_FK[i].tolist(), self.pos_FK[i].tolist()
        toks, wacts = self.tok_FKW[i].tolist(), self.wact_FKW[i].tolist()
        return [
            (keys[j], make_window(toks[j], wacts[j], seqs[j], poss[j], kind)) for j in range(len(keys)) if seqs[j] >= 0
        ]


def make_window(tok_W: list[int], wact_W: list[float], seq: int, center: int, kind: str) -> Window:
    if min(tok_W, default=0) >= 0:  # most windows: no special or out-of-sequence position to drop
        return Window(seq, center, tuple(tok_W), tuple(wact_W), kind)
    keep = [j for j, t in enumerate(tok_W) if t >= 0]
    return Window(seq, center, tuple(tok_W[j] for j in keep), tuple(wact_W[j] for j in keep), kind)


def overlaps_any(window: Window, others: list[Window], half_width: int) -> bool:
    """`window` overlaps one of `others` (only windows of its own sequence can)."""
    return any(window.overlaps(o, half_width) for o in others if o.seq == window.seq)


def greedy_peaks(
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
        cval_FBC = cval_FBC.masked_fill((cpos_FBC - pos_FB[..., None]).abs() <= 2 * half_width, NEG_INF)
    return torch.stack(keys, dim=-1).flatten(1), torch.stack(poss, dim=-1).flatten(1)


@dataclass
class BatchContext:
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
        cval = torch.full((n_f * n_b * n_c,), NEG_INF).scatter_reduce(0, cell_N, key_N, "amax")
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


class RandomPool(_TensorFields):
    """Uniformly random windows shared by all latents: one random non-special token per sequence competes; the
    best `size` by (priority, sequence) are kept, with every tracked latent's codes over the window."""

    FIELDS = ("key_R", "seq_R", "pos_R", "tok_RW", "codes_RWF")

    def __init__(self, size: int, window_len: int, n_latents: int) -> None:
        self.key_R = torch.full((size,), NEG_INF, dtype=torch.float64)
        self.seq_R = torch.full((size,), -1, dtype=torch.long)
        self.pos_R = torch.zeros(size, dtype=torch.long)
        self.tok_RW = torch.full((size, window_len), -1, dtype=torch.long)
        self.codes_RWF = torch.zeros(size, window_len, n_latents)

    def offer(self, ctx: BatchContext, special_BS: torch.Tensor, seed: int) -> None:
        n_b, n_s = special_BS.shape
        seq_BS = torch.arange(ctx.seq_offset, ctx.seq_offset + n_b)[:, None].expand(n_b, n_s)
        pos_BS = torch.arange(n_s)[None, :].expand(n_b, n_s)
        u_BS = token_priority(token_key(seq_BS.flatten(), pos_BS.flatten()), seed, RANDOM_STREAM).view(n_b, n_s)
        key_B, pos_B = u_BS.masked_fill(special_BS, NEG_INF).max(dim=1)
        tok_BW, codes_BWF = ctx.windows(torch.arange(n_b), pos_B)
        seq_B = (torch.arange(n_b) + ctx.seq_offset).masked_fill(key_B == NEG_INF, -1)
        self._keep({"key_R": key_B, "seq_R": seq_B, "pos_R": pos_B, "tok_RW": tok_BW, "codes_RWF": codes_BWF})

    def absorb(self, other: RandomPool) -> None:
        self._keep({name: getattr(other, name) for name in self.FIELDS})

    def _keep(self, new: dict[str, torch.Tensor]) -> None:
        joined = {name: torch.cat([getattr(self, name), new[name]]) for name in self.FIELDS}
        idx = best_k(joined["key_R"][None], joined["seq_R"][None], joined["pos_R"][None], self.key_R.shape[0])[0]
        for name, value in joined.items():
            setattr(self, name, value[idx])


RANDOM_STREAM = 0
"""token_priority stream of the random pool; latent i's importance-weighted and uniform samplers use 2i+1, 2i+2."""
