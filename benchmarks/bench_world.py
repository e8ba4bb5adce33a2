"""Build the embedded world and its SAE zoo from an empty cache; report each stage's time and quality figures.

    .venv/bin/python benchmarks/bench_world.py [--size default|small] [--cache-dir DIR] [--zoo-size capped]

Prints: stage timings (corpus, tokenizer, model training, activations, each zoo SAE), held-out loss
milestones against the unigram entropy, norm figures at the SAE hook, for every SAE on the held-out eval
split its dead-latent share (target for the TopK family: at most 5%), l0 and FVU (all tokens, and ordinary
tokens only), and each cosine SAE's exponent-a trajectory. Target: world + zoo within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from sae_lens import SAE

from evalkit.app.world_cli import describe_world
from evalkit.sources.factory import open_source
from evalkit.world.build import World, build_world
from evalkit.world.zoo import build_zoo

log = logging.getLogger("bench_world")

TOPK_FAMILY = (
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
    "unit_enc_topk",
    "unit_enc_batchtopk",
    "unit_enc_matryoshka_batchtopk",
    "aligned_topk",
    "cosine",
    "topafa",
)


@torch.no_grad()
def held_out_figures(world: World, zoo: Path, names: list[str], n_tokens: int) -> dict[str, dict[str, float]]:
    """Per SAE on `n_tokens` held-out tokens (special tokens excluded): dead share (latents that never fire),
    mean l0, FVU over all tokens and over ordinary tokens (norm <= 10x median; the massive ones dominate
    the variance otherwise)."""
    x_ND = torch.cat([b.acts_BSD[~b.special_BS] for b in open_source(world=world, n_tokens=n_tokens)])
    norms_N = x_ND.norm(dim=-1)
    ordinary_N = norms_N <= 10 * norms_N.median()
    figures = {}
    for name in names:
        sae = SAE.load_from_disk(str(zoo / name))
        f_NF = torch.cat([sae.encode(x) for x in x_ND.split(4096)])
        err_N = (torch.cat([sae.decode(f) for f in f_NF.split(4096)]) - x_ND).pow(2).sum(-1)
        fvu = {
            key: float(err_N[m].sum() / (x_ND[m] - x_ND[m].mean(0)).pow(2).sum())
            for key, m in (("fvu_all", torch.ones_like(ordinary_N)), ("fvu_ordinary", ordinary_N))
        }
        active_NF = f_NF != 0
        figures[name] = {
            "dead": 1.0 - float(active_NF.any(0).float().mean()),
            "l0": float(active_NF.sum(-1).float().mean()),
            "l0_ordinary": float(active_NF[ordinary_N].sum(-1).float().mean()),
            **fvu,
        }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=("default", "small"))
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder (an empty cache)")
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument(
        "--zoo-size", default=None, help="zoo recipe (evalkit.world.zoo.ZOO_SIZES); default: the world size"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="evalkit-bench-"))
    log.info("cache: %s", cache)

    t0 = time.perf_counter()
    world = build_world(cache, args.size)
    t_world = time.perf_counter() - t0
    describe_world(world)
    t0 = time.perf_counter()
    zoo = build_zoo(world, cache_dir=cache, size=args.zoo_size or args.size)
    t_zoo = time.perf_counter() - t0
    summary = json.loads((zoo / "zoo.json").read_text())

    log.info("\n== stage timings (s) ==")
    for stage, seconds in world.info["timings_s"].items():
        log.info("%-28s %7.1f", stage, seconds)
    for sae in summary["saes"]:
        log.info("sae %-24s %7.1f", sae["name"], sae["train_seconds"])
    log.info(
        "%-28s %7.1f\n%-28s %7.1f\n%-28s %7.1f (target <= 600)",
        "world total",
        t_world,
        "zoo total",
        t_zoo,
        "world + zoo",
        t_world + t_zoo,
    )

    log.info("\n== %d held-out tokens: dead share (TopK family target <= 5%%), l0, FVU ==", args.eval_tokens)
    log.info("%-28s %7s %7s %7s %9s %9s", "sae", "dead%", "l0", "l0_ord", "fvu_all", "fvu_ord")
    family = {s["name"] for s in summary["saes"] if s["architecture"] in TOPK_FAMILY}
    names = [s["name"] for s in summary["saes"]]
    for name, fig in held_out_figures(world, zoo, names, args.eval_tokens).items():
        flag = "  ABOVE TARGET" if name in family and fig["dead"] > 0.05 else ""
        log.info(
            "%-28s %7.2f %7.1f %7.1f %9.4f %9.4f%s",
            name,
            100 * fig["dead"],
            fig["l0"],
            fig["l0_ordinary"],
            fig["fvu_all"],
            fig["fvu_ordinary"],
            flag,
        )

    log.info("\n== cosine exponent a (mean over features) ==")
    for sae in summary["saes"]:
        path = zoo / sae["name"] / "cosine_a_trajectory.json"
        if path.exists():
            points = json.loads(path.read_text())
            picks = points[:: max(1, len(points) // 6)] + [points[-1]]
            log.info("%-28s %s", sae["name"], "  ".join(f"{p['step']}:{p['a_mean']:.3f}" for p in picks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
