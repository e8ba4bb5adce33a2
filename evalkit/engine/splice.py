"""Run the rest of a transformer-lens model with x̂ spliced in at the hook: per-token CE and KL.

For residual-stream hooks (`blocks.L.hook_resid_pre` / `hook_resid_post`) only the blocks after the hook run,
starting from the cached activations (transformer-lens `start_at_layer`). Any other hook falls back to a full
forward pass with a hook that replaces the activations.
"""

from __future__ import annotations

import re

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


class PatchScorer:
    """Per-token CE and KL(p_clean ‖ p_patched) at the evaluation tokens of one batch.

    The clean run's log-probabilities are computed once per batch and reused for every patched run (every SAE
    and the zero ablation); only the evaluation tokens' rows are normalised. CE at position t predicts token
    t+1 and is NaN at a sequence's last position.
    """

    def __init__(self, clean_logits_BSV: torch.Tensor, tokens_BS: torch.Tensor, keep_BS: torch.Tensor) -> None:
        device = clean_logits_BSV.device
        self.keep_BS = keep_BS.to(device)
        next_BS = torch.full(tokens_BS.shape, -1, dtype=torch.long, device=device)
        next_BS[:, :-1] = tokens_BS[:, 1:].to(device)
        self.next_T = next_BS[self.keep_BS]
        self.position_T = self.keep_BS.nonzero()[:, 1]
        self.has_next_T = self.next_T >= 0
        self.clean_logp_TV = F.log_softmax(clean_logits_BSV[self.keep_BS].float(), dim=-1)
        self.clean_p_TV = self.clean_logp_TV.exp()

    def ce_kl(self, logits_BSV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE [T], KL [T]) of patched logits [B, S, V]."""
        logp_TV = F.log_softmax(logits_BSV[self.keep_BS].float(), dim=-1)
        return self._ce(logp_TV), (self.clean_p_TV * (self.clean_logp_TV - logp_TV)).sum(-1)

    def ce_kl_same_rows(self, logits_SV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE [T], KL [T]) of a patched run whose logits are the same for every sequence of the batch [S, V]
        (the zero ablation from a residual-stream hook): normalised once per position, then read per token."""
        logp_SV = F.log_softmax(logits_SV.float(), dim=-1)
        logp_TV = logp_SV[self.position_T]
        return self._ce(logp_TV), (self.clean_p_TV * (self.clean_logp_TV - logp_TV)).sum(-1)

    def clean_ce(self) -> torch.Tensor:
        return self._ce(self.clean_logp_TV)

    def _ce(self, logp_TV: torch.Tensor) -> torch.Tensor:
        picked_T = logp_TV.gather(-1, self.next_T.clamp_min(0)[:, None]).squeeze(-1)
        return torch.where(self.has_next_T, -picked_T, torch.full_like(picked_T, float("nan")))


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
