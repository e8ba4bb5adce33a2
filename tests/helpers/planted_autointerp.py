"""Planted latents with known answers for the autointerp tests: random words; latent k fires exactly on word k."""

from __future__ import annotations

import torch

from autointerp.config import AutointerpConfig
from autointerp.sampling import ExampleCollector, LatentExamples

VOCAB = ["<bos>", "cat", "dog", "red", "blue", "seven", "june", "paris", "happy", "quote", "paren"] + [
    f"w{k}" for k in range(40)
]
N_PLANTED = 10
"""Latents 0..9 fire on VOCAB[1..10]; latent 10 is dead; latent 11 fires on only 5 tokens."""
RARE_LATENT = 11
D_SAE = 12


def decode(ids: list[int]) -> list[str]:
    return [VOCAB[i] for i in ids]


def planted_examples(config: AutointerpConfig, n_seq: int = 120, seq_len: int = 48) -> dict[int, LatentExamples]:
    gen = torch.Generator().manual_seed(3)
    collector = ExampleCollector(D_SAE, config=config)
    for start in range(0, n_seq, 40):
        tokens_BS = torch.randint(1, len(VOCAB), (40, seq_len), generator=gen)
        tokens_BS[:, 0] = 0
        special_BS = tokens_BS == 0
        codes_BSF = torch.zeros(40, seq_len, D_SAE)
        for k in range(N_PLANTED):
            hits = tokens_BS == k + 1
            codes_BSF[..., k] = hits * (1.0 + torch.rand(40, seq_len, generator=gen))
        if start == 0:
            codes_BSF[:5, 7, RARE_LATENT] = 3.0
        collector.update(tokens_BS, codes_BSF, special_BS)
    return collector.finish()
