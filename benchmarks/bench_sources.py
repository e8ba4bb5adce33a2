"""The activation source the benchmarks share: a HookedTransformer run up to a residual-stream hook on fixed tokens."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformer_lens import HookedTransformer

from evalkit.core.batch import ActivationBatch
from evalkit.engine.runconfig import DataSource


def hooked_model_source(
    model: HookedTransformer, tokens_NS: torch.Tensor, hook: str, batch_seqs: int, bos: int, fingerprint: str
) -> DataSource:
    """Batches of `batch_seqs` sequences of tokens_NS; `hook` must be `blocks.{layer}.hook_resid_pre` (the residual
    entering block `layer`, which the model returns when stopped at that layer)."""
    layer = int(hook.split(".")[1])

    def batches() -> Iterator[ActivationBatch]:
        for i in range(0, tokens_NS.shape[0], batch_seqs):
            t_BS = tokens_NS[i : i + batch_seqs]
            with torch.no_grad():
                acts_BSD = model(t_BS, stop_at_layer=layer)
            positions_BS = torch.arange(t_BS.shape[1]).expand_as(t_BS).clone()
            yield ActivationBatch(acts_BSD, positions_BS, t_BS == bos, t_BS)

    return DataSource(
        batches,
        {"kind": "bench", "n_seq": tokens_NS.shape[0]},
        model=model,
        hook_name=hook,
        fingerprint=f"{fingerprint}:{tokens_NS.shape[0]}",
        has_tokens=True,
        label_names=(),
    )
