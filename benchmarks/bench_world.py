"""Build the embedded world and its SAE zoo from an empty cache; report each stage's time and quality figures.

    .venv/bin/python benchmarks/bench_world.py [--size default|small] [--cache-dir DIR]

Prints: stage timings (corpus, tokenizer, model training, activations, each zoo SAE), held-out loss
milestones against the unigram entropy, norm figures at the SAE hook, the dead-latent share of every
TopK-family SAE on the held-out eval split (target: at most 5%), and each cosine SAE's exponent-a
trajectory. Target: world + zoo within 10 minutes on 2 CPU cores.
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

from evalkit.sources import open_source
from evalkit.world import build_world
from evalkit.world.build import World
from evalkit.world.cli import describe_world
from evalkit.world.zoo import build_zoo

log = logging.getLogger("bench_world")

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk", "aligned_topk", "cosine", "topafa")


@torch.no_grad()
def dead_shares(world: World, zoo: Path, names: list[str], n_tokens: int) -> dict[str, float]:
    """Fraction of latents that never fire on `n_tokens` held-out tokens (special tokens excluded)."""
    saes = {name: SAE.load_from_disk(str(zoo / name)) for name in names}
    fired = {name: torch.zeros(sae.cfg.d_sae, dtype=torch.bool) for name, sae in saes.items()}
    for batch in open_source(world=world, n_tokens=n_tokens, batch_size=4096):
        x = batch.acts_BSD[~batch.special_BS]
        for name, sae in saes.items():
            fired[name] |= (sae.encode(x) != 0).any(0)
    return {name: 1.0 - float(f.float().mean()) for name, f in fired.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="default", choices=("default", "small"))
    parser.add_argument(
        "--cache-dir", default=None, help="default: a fresh temporary folder (an empty cache)"
    )
    parser.add_argument("--eval-tokens", type=int, default=65536)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="evalkit-bench-"))
    log.info("cache: %s", cache)

    t0 = time.perf_counter()
    world = build_world(cache, args.size)
    t_world = time.perf_counter() - t0
    describe_world(world)
    t0 = time.perf_counter()
    zoo = build_zoo(world, cache_dir=cache, size=args.size)
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

    log.info("\n== dead-latent share on %d held-out tokens (TopK family; target <= 5%%) ==", args.eval_tokens)
    names = [s["name"] for s in summary["saes"] if s["architecture"] in TOPK_FAMILY]
    for name, share in dead_shares(world, zoo, names, args.eval_tokens).items():
        log.info("%-28s %6.2f%% %s", name, 100 * share, "" if share <= 0.05 else "  ABOVE TARGET")

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
