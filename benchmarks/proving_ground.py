"""The proving ground's figures: the world's norm statistics, one row per zoo SAE, and the issue's checks.

    .venv/bin/python benchmarks/proving_ground.py [--run evalkit-out] [--cache-dir DIR] [--size default]

Reads the cached world and zoo (built by `evalkit demo` / `evalkit zoo`; nothing is trained here) and a demo
output folder, and logs:
- the world's norm figures over the evaluation tokens (BOS excluded): variance share above 10x the median
  (target 10-60%), mean/median, max/median, BOS / median;
- per zoo SAE: steps, tokens seen, final training loss, whether the loss levelled off, fvu, explained variance,
  l0, dead latents (%), latents in duplicate decoder pairs (%);
- checks: explained-variance spread across the zoo (>= 0.2), families in range at >= 3 of the 5 default fvu
  targets (>= 5), largest dead share (<= 5%), largest share of latents in duplicate pairs (< 1%).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sae_lens import SAE

from evalkit.sae.registration import ensure_registered
from evalkit.world.build import build_world
from evalkit.world.zoo import build_zoo
from reports.load import load_run
from reports.matched import OUT_OF_RANGE, compute_matched

log = logging.getLogger("proving_ground")
DUPLICATE_COSINE = 0.99


def latents_in_duplicate_pairs(folder: Path) -> int:
    """Latents that belong to at least one pair of unit decoder rows with |cos| > 0.99."""
    sae = SAE.load_from_disk(str(folder))
    w = sae.W_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gram = (w @ w.T).abs()
    gram.fill_diagonal_(0)
    return int((gram > DUPLICATE_COSINE).any(dim=1).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("evalkit-out"), help="an `evalkit demo` output folder")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $EVALKIT_CACHE or ~/.cache)")
    parser.add_argument("--size", default="default", help="world size the demo ran on (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_registered()
    world = build_world(args.cache_dir, args.size)
    norms = world.info["norms"]
    log.info(
        "world: variance share above 10x median %.1f%% (%.2f%% of tokens), mean/median %.2f, max/median %.1f, "
        "BOS/median %.1f",
        100 * norms["variance_share_above_10x"],
        100 * norms["frac_above_10x"],
        norms["mean_over_median"],
        norms["max_over_median"],
        norms["planted_over_median"]["<bos>"],
    )
    zoo = build_zoo(world, cache_dir=args.cache_dir)
    records = json.loads((zoo / "zoo.json").read_text())["saes"]
    tables = load_run(args.run)
    m = tables.sae_metrics
    log.info("| SAE | steps | tokens | final loss | levelled off | fvu | EV | l0 | dead % | in duplicate pairs % |")
    log.info("|---|---|---|---|---|---|---|---|---|---|")
    dup_shares, dead_shares = [], []
    for r in records:
        name = r["name"]
        row = m.loc[name] if name in m.index else None
        d_sae = SAE.load_from_disk(str(zoo / name)).cfg.d_sae
        dup = 100 * latents_in_duplicate_pairs(zoo / name) / d_sae
        dead = 100 * float(row["dead_features"]) / d_sae if row is not None else float("nan")
        dup_shares.append(dup)
        dead_shares.append(dead)
        log.info(
            "| %s | %d | %d | %.4g | %s | %.4f | %.4f | %.1f | %.2f | %.2f |",
            name,
            r["steps"],
            r["tokens_seen"],
            r["final_loss"],
            "yes" if r["converged"] else "NO",
            row["fvu"] if row is not None else float("nan"),
            row["explained_variance"] if row is not None else float("nan"),
            row["l0"] if row is not None else float("nan"),
            dead,
            dup,
        )
    ev = m.loc[[r["name"] for r in records if r["name"] in m.index], "explained_variance"]
    log.info("explained_variance: %.4f .. %.4f (spread %.4f; target >= 0.2)", ev.min(), ev.max(), ev.max() - ev.min())
    matched = compute_matched(tables, by="fvu")
    rows = matched[matched["metric"] == "l0"]
    coverage = (rows["lower_sae"] != OUT_OF_RANGE).groupby(rows["family"]).sum()
    targets = sorted(rows["target"].unique())
    log.info("default fvu targets: %s", ", ".join(f"{t:.4g}" for t in targets))
    for family, n in coverage.items():
        log.info("  %-45s in range at %d of %d", family, n, len(targets))
    log.info("families in range at >= 3 targets: %d (target >= 5)", int((coverage >= 3).sum()))
    log.info("largest dead share: %.2f%% (target <= 5%%)", max(dead_shares))
    log.info("largest share of latents in duplicate pairs: %.2f%% (target < 1%%)", max(dup_shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
