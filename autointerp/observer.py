"""The runner seam: an observer (evalkit.engine.runner.BatchObserver) that feeds one ExampleCollector per SAE.

The runner hands observers a SaeBatch of the *kept* tokens, flattened. Windows need sequences, so this adapter
rebuilds them: a per-token sequence index in `batch.extras["seq_index"]` when the runner provides one (exact),
else a new sequence starts wherever the position does not increase (exact unless filtering removed every token
of a sequence before the last kept position of the previous one). Dropped tokens come back as masked gaps,
like special tokens: never active, never shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from autointerp.client import LLMClient
from autointerp.config import AutointerpConfig
from autointerp.explainers import Decode
from autointerp.pipeline import AutointerpResult, run_autointerp
from autointerp.sampling import ExampleCollector, LatentExamples
from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import SaeBatch
from metrics.base import State, StateValue

SEQ_INDEX_KEY = "seq_index"


def sequences_from_flat(
    tokens_T: torch.Tensor, f_TF: torch.Tensor, positions_T: torch.Tensor, seq_T: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens_BS, codes_BSF, special_BS) from flattened kept tokens; gaps are marked special."""
    positions_T = positions_T.long().cpu()
    if seq_T is None:
        starts_T = torch.ones_like(positions_T, dtype=torch.bool)
        starts_T[1:] = positions_T[1:] <= positions_T[:-1]
        seq_T = starts_T.long().cumsum(0) - 1
    seq_T = seq_T.long().cpu()
    seq_T = seq_T - seq_T.min() if len(seq_T) else seq_T
    n_seq = int(seq_T.max()) + 1 if len(seq_T) else 0
    seq_len = int(positions_T.max()) + 1 if len(positions_T) else 0
    tokens_BS = torch.zeros(n_seq, seq_len, dtype=torch.long)
    special_BS = torch.ones(n_seq, seq_len, dtype=torch.bool)
    codes_BSF = torch.zeros(n_seq, seq_len, f_TF.shape[1])
    tokens_BS[seq_T, positions_T] = tokens_T.long().cpu()
    special_BS[seq_T, positions_T] = False
    codes_BSF[seq_T, positions_T] = f_TF.detach().float().cpu()
    return tokens_BS, codes_BSF, special_BS


class AutointerpObserver:
    """Collects examples for the SAEs it was given; `finish(sae_id)` runs autointerp on one of them."""

    def __init__(self, config: AutointerpConfig, d_sae_by_id: dict[str, int]) -> None:
        self.config = config
        self.collectors = {
            sae_id: ExampleCollector(d_sae, list(config.latents) if config.latents else None, config)
            for sae_id, d_sae in d_sae_by_id.items()
        }

    def wants(self, sae_id: str) -> bool:
        return sae_id in self.collectors

    def observe(self, sae_id: str, batch: SaeBatch) -> None:
        if batch.tokens_T is None:
            raise EvalkitInputError("autointerp", "the activation source has no token ids; windows need tokens")
        seq_T = batch.extras.get(SEQ_INDEX_KEY)
        tokens_BS, codes_BSF, special_BS = sequences_from_flat(batch.tokens_T, batch.f_TF, batch.positions_T, seq_T)
        # The runner's sequence index is global in the hook's data: windows keep it, so the sampled windows are
        # the same whichever worker or shard read the sequence (and collectors merge exactly).
        offset = int(seq_T.min()) if seq_T is not None and len(seq_T) else None
        self.collectors[sae_id].update(tokens_BS, codes_BSF, special_BS, seq_offset=offset)

    def state_dict(self) -> dict[str, State]:
        """Per SAE id, its collector's state (the stream-accumulator protocol of metrics.base)."""
        return {sae_id: collector.state_dict() for sae_id, collector in self.collectors.items()}

    def load_state_dict(self, states: Mapping[str, Mapping[str, StateValue]]) -> None:
        for sae_id, state in states.items():
            self.collectors[sae_id].load_state_dict(state)

    def merge(self, other: AutointerpObserver) -> None:
        """Fold in an observer of the same SAEs and config that saw other sequences."""
        for sae_id, collector in other.collectors.items():
            self.collectors[sae_id].merge(collector)

    def examples(self, sae_id: str) -> dict[int, LatentExamples]:
        return self.collectors[sae_id].finish()

    def finish(
        self, sae_id: str, decode: Decode, cache_dir: Path | None, llm: LLMClient | None = None
    ) -> tuple[dict[int, LatentExamples], AutointerpResult]:
        """Run autointerp on one SAE's collected examples; returns them too (for the report's cards)."""
        examples = self.examples(sae_id)
        return examples, run_autointerp(examples, decode, self.config, cache_dir, llm)
