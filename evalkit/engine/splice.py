"""Run the rest of a transformer-lens model with x̂ spliced in at the hook: per-token CE and KL.

For residual-stream hooks (`blocks.L.hook_resid_pre` / `hook_resid_post`) only the blocks after the hook run,
starting from the cached activations (transformer-lens `start_at_layer`). Any other hook falls back to a full
forward pass with a hook that replaces the activations.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def resume_layer(hook_name: str) -> int | None:
    """The block to restart from when the hook is a residual-stream point, else None."""
    m = _RESID.match(hook_name)
    if m is None:
        return None
    layer = int(m.group(1))
    return layer if m.group(2) == "pre" else layer + 1


ROW_CHUNK = 128
"""Evaluation tokens per chunk of the CE/KL computation: its temporaries are ROW_CHUNK × vocabulary floats (26 MB
for GPT-2), which the allocator reuses and the cache holds, where whole-batch temporaries (823 MB at 4,096 tokens)
are fresh pages every time. Every operation is row-wise, so each token's values are those of the whole batch."""


class PatchScorer:
    """Per-token CE and KL(p_clean ‖ p_patched) at the evaluation tokens of one batch.

    The clean run's log-probabilities are computed once per batch and reused for every patched run (every SAE
    and the zero ablation); only the evaluation tokens' rows are normalised, ROW_CHUNK tokens at a time, and only
    the log-probabilities are kept (the probabilities are recomputed inside the KL kernel). CE at
    position t predicts token t+1 and is NaN at a sequence's last position.
    """

    def __init__(self, clean_logits_BSV: torch.Tensor, tokens_BS: torch.Tensor, keep_BS: torch.Tensor) -> None:
        device = clean_logits_BSV.device
        self.keep_BS = keep_BS.to(device)
        next_BS = torch.full(tokens_BS.shape, -1, dtype=torch.long, device=device)
        next_BS[:, :-1] = tokens_BS[:, 1:].to(device)
        self.next_T = next_BS[self.keep_BS]
        self.position_T = self.keep_BS.nonzero()[:, 1]
        self.row_T = self.keep_BS.flatten().nonzero().squeeze(1)  # each token's row in the flattened [B·S, V]
        self.has_next_T = self.next_T >= 0
        flat_NV = clean_logits_BSV.flatten(0, 1)
        self.clean_logp_TV = torch.empty(len(self.row_T), flat_NV.shape[-1], device=device)
        for start, stop in self._chunks():
            self.clean_logp_TV[start:stop] = F.log_softmax(flat_NV[self.row_T[start:stop]].float(), dim=-1)

    def _chunks(self) -> list[tuple[int, int]]:
        n = len(self.row_T)
        return [(start, min(start + ROW_CHUNK, n)) for start in range(0, n, ROW_CHUNK)]

    def ce_kl(self, logits_BSV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE [T], KL [T]) of patched logits [B, S, V]."""
        flat_NV = logits_BSV.flatten(0, 1)
        return self._ce_kl(lambda start, stop: F.log_softmax(flat_NV[self.row_T[start:stop]].float(), dim=-1))

    def ce_kl_same_rows(self, logits_SV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE [T], KL [T]) of a patched run whose logits are the same for every sequence of the batch [S, V]
        (the zero ablation from a residual-stream hook): normalised once per position, then read per token."""
        logp_SV = F.log_softmax(logits_SV.float(), dim=-1)
        return self._ce_kl(lambda start, stop: logp_SV[self.position_T[start:stop]])

    def _ce_kl(self, logp_of: Callable[[int, int], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """CE and KL chunk by chunk; `logp_of(start, stop)` gives the [stop − start, V] patched
        log-probabilities."""
        ce_T = torch.empty(len(self.row_T), device=self.clean_logp_TV.device)
        kl_T = torch.empty_like(ce_T)
        for start, stop in self._chunks():
            logp_CV = logp_of(start, stop)
            ce_T[start:stop] = self._ce(logp_CV, self.next_T[start:stop], self.has_next_T[start:stop])
            # p·(log p − log q) elementwise in one fused kernel, p = exp(log p) computed there: the clean
            # probabilities are never stored (4,096 × 50,257 floats = 823 MB a batch for GPT-2).
            clean_CV = self.clean_logp_TV[start:stop]
            kl_T[start:stop] = F.kl_div(logp_CV, clean_CV, reduction="none", log_target=True).sum(-1)
        return ce_T, kl_T

    def clean_ce(self) -> torch.Tensor:
        return self._ce(self.clean_logp_TV, self.next_T, self.has_next_T)

    @staticmethod
    def _ce(logp_TV: torch.Tensor, next_T: torch.Tensor, has_next_T: torch.Tensor) -> torch.Tensor:
        picked_T = logp_TV.gather(-1, next_T.clamp_min(0)[:, None]).squeeze(-1)
        return torch.where(has_next_T, -picked_T, torch.full_like(picked_T, float("nan")))


class Splicer:
    """Logits of a model with the hook's activations replaced, for one batch of sequences."""

    def __init__(self, model: HookedTransformer, hook_name: str) -> None:
        self.model = model
        self.hook_name = hook_name
        self.start_layer = resume_layer(hook_name)

    @torch.no_grad()
    def logits(self, tokens_BS: torch.Tensor, new_acts_BSD: torch.Tensor) -> torch.Tensor:
        dtype = self.model.cfg.dtype
        if self.start_layer is not None:
            return self.model(new_acts_BSD.to(dtype), start_at_layer=self.start_layer, return_type="logits")

        def replace(acts: torch.Tensor, hook: object) -> torch.Tensor:
            return new_acts_BSD.to(acts.dtype).reshape(acts.shape)

        return self.model.run_with_hooks(tokens_BS, return_type="logits", fwd_hooks=[(self.hook_name, replace)])

    @property
    def zero_rows_shared(self) -> bool:
        """Whether a zero ablation gives every sequence the same logits: from a residual-stream hook the blocks
        after it see only the (zero) residual stream, never the tokens, so one sequence stands for the batch."""
        return self.start_layer is not None

    @torch.no_grad()
    def zero_ablated_logits(self, tokens_BS: torch.Tensor, acts_BSD: torch.Tensor) -> torch.Tensor:
        """Logits with the hook's activations zeroed at every position: [S, V] for one sequence when
        `zero_rows_shared` (1/B of the work), else [B, S, V]."""
        if self.zero_rows_shared:
            return self.logits(tokens_BS[:1], torch.zeros_like(acts_BSD[:1]))[0]
        return self.logits(tokens_BS, torch.zeros_like(acts_BSD))
