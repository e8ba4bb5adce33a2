"""Closing-note figures: offline (baseline) autointerp on the embedded world, against its planted concepts.

For each SAE: one pass over the world's eval text collects examples and the per-latent concept F1 (the
`concepts` metric's definition, metrics.concepts.f1_matrix); then baseline detection is scored on the latents
whose best concept F1 is >= 0.5, next to the shuffled-explanation control on the same latents.

    python -m autointerp.world_figures --sae ZOO_FOLDER [--tokens 32768] [--max-saes 8]
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from autointerp.config import AutointerpConfig
from autointerp.pipeline import CONTROL, run_autointerp
from autointerp.sampling import ExampleCollector
from evalkit.sae.loaded import LoadedSAE
from evalkit.sae.loaders.formats import load_saes
from evalkit.sources.world_source import world_source
from evalkit.world.build import World, build_world
from metrics.concepts import ALIGNED_F1, f1_matrix

log = logging.getLogger(__name__)


@dataclass
class _ConceptCounts:
    tp_FL: torch.Tensor
    fires_F: torch.Tensor
    labels_L: torch.Tensor

    def update(self, codes_TF: torch.Tensor, labels_TL: torch.Tensor) -> None:
        fires_TF = (codes_TF > 0).double()
        self.tp_FL += fires_TF.T @ labels_TL.double()
        self.fires_F += fires_TF.sum(0)
        self.labels_L += labels_TL.double().sum(0)


@dataclass(frozen=True)
class WorldFigure:
    sae_id: str
    eligible: int
    aligned: int
    detection: float
    detection_std: float
    control: float
    control_std: float
    scored: int
    same_explanation: int
    """Control pairs whose partner's explanation equals the latent's own (duplicated latents)."""
    control_distinct: float
    """Control mean over pairs with different explanations."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))


@torch.no_grad()
def collect(
    saes: list[LoadedSAE], n_tokens: int, config: AutointerpConfig, size: str = "default"
) -> tuple[dict[str, ExampleCollector], dict[str, _ConceptCounts], World]:
    """One pass over the world: per SAE an ExampleCollector and concept co-occurrence counts."""
    world = build_world(size=size)
    source = world_source(world, n_tokens=n_tokens)
    n_labels = len(source.label_names)
    collectors = {s.sae_id: ExampleCollector(s.d_sae, config=config) for s in saes}
    counts = {
        s.sae_id: _ConceptCounts(
            torch.zeros(s.d_sae, n_labels, dtype=torch.float64),
            torch.zeros(s.d_sae, dtype=torch.float64),
            torch.zeros(n_labels, dtype=torch.float64),
        )
        for s in saes
    }
    for batch in source:
        keep_BS = ~batch.special_BS
        for s in saes:
            codes_BSF = s.sae.encode(batch.acts_BSD).float()
            collectors[s.sae_id].update(batch.tokens_BS, codes_BSF, batch.special_BS)
            if batch.labels_BSL is not None:
                counts[s.sae_id].update(codes_BSF[keep_BS], batch.labels_BSL[keep_BS])
    return collectors, counts, world


def figures(saes: list[LoadedSAE], n_tokens: int, size: str = "default") -> list[WorldFigure]:
    config = AutointerpConfig(explainer="baseline", judge="baseline")
    collectors, counts, world = collect(saes, n_tokens, config, size)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(world.tokenizer_dir))

    def decode(ids: list[int]) -> list[str]:
        return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]

    out = []
    for s in saes:
        examples = collectors[s.sae_id].finish()
        c = counts[s.sae_id]
        best_f1_F = f1_matrix(c.tp_FL, c.fires_F, c.labels_L).max(dim=1).values
        eligible = [k for k, e in examples.items() if e.status == "ok"]
        aligned = tuple(k for k in eligible if float(best_f1_F[k]) >= ALIGNED_F1)
        result = run_autointerp(examples, decode, replace(config, latents=aligned), None)
        det = [r.score for r in result.rows if r.scorer == "detection" and r.score is not None]
        own = {k: e.text for k, e in result.explanations.items()}
        ctl_rows = [r for r in result.rows if r.scorer == CONTROL and r.score is not None]
        ctl = [float(r.score) for r in ctl_rows if r.score is not None]
        same = sum(r.explanation == own[r.latent] for r in ctl_rows)
        distinct = [float(r.score) for r in ctl_rows if r.score is not None and r.explanation != own[r.latent]]
        stats = (*_mean_std(det), *_mean_std(ctl), len(det), same, _mean_std(distinct)[0])
        out.append(WorldFigure(s.sae_id, len(eligible), len(aligned), *stats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", action="append", required=True, help="SAE folder (or a folder of several)")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--max-saes", type=int, default=8)
    parser.add_argument("--size", default="default", help="world size (default or small)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    saes = [s for p in args.sae for s in load_saes(p)][: args.max_saes]
    rows = figures(saes, args.tokens, args.size)
    header = (
        "sae_id | eligible | F1>=0.5 | scored | baseline detection bal.acc | shuffled control | "
        "control pairs with the same explanation | control over distinct explanations"
    )
    lines = [header] + [
        f"{r.sae_id} | {r.eligible} | {r.aligned} | {r.scored} | {r.detection:.3f} ± {r.detection_std:.3f} | "
        f"{r.control:.3f} ± {r.control_std:.3f} | {r.same_explanation} | {r.control_distinct:.3f}"
        for r in rows
    ]
    log.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
