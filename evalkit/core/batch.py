"""The batch every activation source yields and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActivationBatch:
    """Hook activations for a block of sequences, with the token metadata metrics need.

    Flat activation files (no sequence structure) arrive as sequences of length 1.
    """

    acts_BSD: torch.Tensor
    """Raw hook activations [n_seq, seq_len, d_in], float32 on the run's device."""
    positions_BS: torch.Tensor
    """Position of each token within its sequence [n_seq, seq_len], int64."""
    special_BS: torch.Tensor
    """True for BOS/EOS/PAD tokens [n_seq, seq_len], bool; excluded from metrics by default."""
    tokens_BS: torch.Tensor | None = None
    """Token ids [n_seq, seq_len], int64; None when the source has no tokens."""
    labels_BSL: torch.Tensor | None = None
    """Token-level 0/1 concept labels [n_seq, seq_len, n_labels], bool; None when unknown."""
    label_names: tuple[str, ...] = ()
    """Names of the label columns, in order."""

    @property
    def n_tokens(self) -> int:
        return int(self.acts_BSD.shape[0] * self.acts_BSD.shape[1])

    @property
    def d_in(self) -> int:
        return int(self.acts_BSD.shape[-1])
