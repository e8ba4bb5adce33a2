"""The seed papers' claims put to a run's numbers (default: the `evalkit demo` output folder).

    .venv/bin/python benchmarks/seed_claims.py [--run evalkit-out] [--out DIR]

Reads the run's results (nothing is recomputed), evaluates every claim of reports.claims.CLAIMS, logs the table
with its verdicts (holds / does not hold / inside the noise / not testable) and writes claims.csv into
--out (default: the run folder). Also logs, per family, the fvu range and the zoo's matched-target coverage:
how many of the default fvu targets each family brackets.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from reports.claims import claims_table, write_claims
from reports.load import load_run
from reports.matched import OUT_OF_RANGE, compute_matched

log = logging.getLogger("seed_claims")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("evalkit-out"), help="an evalkit run/demo output folder")
    parser.add_argument("--out", type=Path, default=None, help="where claims.csv goes (default: --run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tables = load_run(args.run)
    matched = compute_matched(tables, by="fvu")
    coverage = (
        matched[matched["metric"] == "l0"]
        .assign(in_range=lambda m: m["lower_sae"] != OUT_OF_RANGE)
        .groupby("family")["in_range"]
        .sum()
    )
    targets = sorted(matched["target"].unique())
    log.info("default fvu targets: %s", ", ".join(f"{t:.4g}" for t in targets))
    for family, n in coverage.items():
        log.info("  %-45s in range at %d of %d targets", family, n, len(targets))
    log.info("families in range at >= 3 targets: %d", int((coverage >= 3).sum()))
    table = claims_table(tables)
    for _, row in table.iterrows():
        log.info(
            "claim %s  %-70s %-14s %s: %.4g vs %.4g (difference %.4g, half-width %.4g, %d points) -> %s [%s]",
            row["claim"],
            row["statement"],
            row["metric"],
            row["compared_at"],
            row["claimed_value"],
            row["baseline_value"],
            row["difference"],
            row["half_width"],
            row["n_points"],
            row["verdict"].upper(),
            row["spread_note"],
        )
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    path = write_claims(table, out)
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
