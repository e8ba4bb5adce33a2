"""`evalkit world` and `evalkit zoo`: build (or reuse from the cache) the embedded world and its SAE zoo."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

from evalkit.core.defaults import WORLD_SIZE_NAMES

if TYPE_CHECKING:  # torch and transformer-lens: imported only when a command runs, so --help stays fast
    from evalkit.world.build import World

log = logging.getLogger("evalkit.world")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        choices=WORLD_SIZE_NAMES,
        default="default",
        help="'small' is a seconds-sized world for tests (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $EVALKIT_CACHE, else ~/.cache/evalkit)"
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    world = subparsers.add_parser(
        "world",
        help="build the embedded world (corpus, tokenizer, tiny model); cached",
        description="Build the embedded world and print its norm and loss figures.",
    )
    _add_common(world)
    world.set_defaults(func=run_world)
    zoo = subparsers.add_parser(
        "zoo",
        help="train the SAE zoo on the embedded world; cached",
        description="Build the world if needed, then train (or reuse) the SAE zoo.",
    )
    _add_common(zoo)
    zoo.set_defaults(func=run_zoo)


def describe_world(world: World) -> None:
    """Log where the world lives, the norm figures at the SAE hook, and the loss milestones."""
    info = world.info
    norms = info["norms"]
    log.info("world: %s", world.root)
    log.info("model folder (use with --model): %s; SAE hook: %s", world.model_dir, world.hook_name)
    quantiles = ", ".join(f"q{float(q):g}={v:.1f}" for q, v in norms["quantiles"].items())
    log.info(
        "ordinary-token norms at %s (%d evaluation tokens, BOS excluded): %s",
        world.hook_name,
        norms["n_tokens"],
        quantiles,
    )
    log.info(
        "variance share of tokens above 10x the median: %.1f%% (%.2f%% of tokens); mean/median %.2f; "
        "max/median %.1f (median %.2f)",
        100 * norms["variance_share_above_10x"],
        100 * norms["frac_above_10x"],
        norms["mean_over_median"],
        norms["max_over_median"],
        norms["median"],
    )
    if "pca_variance_share" in norms:
        log.info(
            "variance share inside the best k-dimensional subspace (PCA): %s",
            ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in norms["pca_variance_share"].items()),
        )
    for token, norm in norms["planted_norm"].items():
        log.info(
            "special token %-6s mean norm %.1f = %.1f x median (excluded from evaluation)",
            token,
            norm,
            norms["planted_over_median"][token],
        )
    entropy = info["unigram_entropy"]
    log.info("unigram entropy of the corpus: %.3f nats", entropy)
    for point in info["history"]:
        log.info(
            "step %5d held-out loss %.3f (%.0f%% of unigram entropy)%s",
            point["step"],
            point["heldout_loss"],
            100 * point["heldout_loss"] / entropy,
            " with the heavy tail planted" if point.get("tail_planted") else "",
        )
    log.info("build timings (s): %s", json.dumps({k: round(v, 1) for k, v in info["timings_s"].items()}))


def run_world(args: argparse.Namespace) -> int:
    from evalkit.world.build import build_world

    describe_world(build_world(args.cache_dir, args.size))
    return 0


def run_zoo(args: argparse.Namespace) -> int:
    from evalkit.world.build import build_world
    from evalkit.world.zoo import build_zoo

    world = build_world(args.cache_dir, args.size)
    folder = build_zoo(world, cache_dir=args.cache_dir, size=args.size)
    summary = json.loads((folder / "zoo.json").read_text())
    log.info(
        "zoo: %s (%d SAEs on %s; activation scale c = %.3f)",
        folder,
        len(summary["saes"]),
        world.hook_name,
        summary["activation_scale"],
    )
    for sae in summary["saes"]:
        extra = f", a = {sae['a_final']:.3f}" if "a_final" in sae else ""
        log.info(
            "  %-28s %-30s %5d steps (%s) %8d tokens, final loss %.4g, %5.1f s, %-13s init%s",
            sae["name"],
            sae["architecture"],
            sae["steps"],
            "levelled off" if sae["converged"] else "NOT levelled off",
            sae["tokens_seen"],
            sae["final_loss"],
            sae["train_seconds"],
            "outlier-aware" if sae.get("outlier_init") else "random",
            extra,
        )
    return 0
