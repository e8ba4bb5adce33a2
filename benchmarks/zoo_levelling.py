"""How long a zoo SAE must train before its loss levels off: zoo entries trained exactly as the zoo trains them
(same data, initialisation, learning rate; the schedule's shares scaled to each budget), at several step budgets.

    .venv/bin/python benchmarks/zoo_levelling.py [--entries topk_k16] [--steps 1000,4000,8000,16000]
        [--cache-dir DIR] [--size default]

Prints per entry and budget: the training time (one thread, as the zoo trains), the final probe loss, the
levelling-off criterion's value (relative change of the mean probe loss between the last two 10% windows; the zoo
asks for at most 1%) and whether it held. The zoo's own budget (1,000 steps; 1,500 for cosine SAEs) is the first
row when listed, so the ratio to it is the cost of levelling off. Nothing is cached: every row trains afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import torch

from evalkit.world.build import build_world
from evalkit.world.zoo import ZOO_SIZES, size_entries, train_one, training_set, training_tokens

log = logging.getLogger("zoo_levelling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="topk_k16", help="zoo SAE names, comma-separated (`evalkit zoo`)")
    parser.add_argument("--steps", default="1000,4000,8000,16000", help="step budgets, comma-separated")
    parser.add_argument("--cache-dir", default=None, help="world cache (default: $EVALKIT_CACHE or ~/.cache)")
    parser.add_argument("--size", default="default", help="world and zoo size (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # as the zoo trains: one thread per SAE
    world = build_world(args.cache_dir, args.size)
    zoo = ZOO_SIZES[args.size if args.size in ZOO_SIZES else "default"]
    entries = {e.name: e for e in size_entries(zoo, world.d_model)}
    acts_ND, c = training_set(training_tokens(world), zoo)
    head = f"{'SAE':<24} {'steps':>7} {'tokens':>11} {'train s':>8} {'probe loss':>11} {'last window':>12} levelled"
    rows = [head]
    for name in args.entries.split(","):
        if name not in entries:
            parser.error(f"no zoo SAE named {name!r}; the zoo has: {', '.join(entries)}")
        for steps in (int(s) for s in args.steps.split(",")):
            entry = dataclasses.replace(entries[name], steps=steps)
            with tempfile.TemporaryDirectory() as tmp:
                record = train_one(entry, acts_ND, c, world, zoo, Path(tmp))[0]
            change = record["probe_loss_change_last_window"]
            row = (
                f"{name:<24} {steps:>7} {steps * zoo.batch_size:>11} {record['train_seconds']:>8.1f} "
                f"{record['probe_loss_final']:>11.4g} {'n/a' if change is None else f'{change:.2%}':>12} "
                f"{'yes' if record['converged'] else 'no'}"
            )
            log.info("%s", row)
            rows.append(row)
    log.info("\n%s", "\n".join(rows))


if __name__ == "__main__":
    main()
