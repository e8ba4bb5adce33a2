"""The SAE zoo: every variant, sparsity sweeps and seed replicas, trained by SAETrainer on the world.

All SAEs read the same cached hook activations (BOS excluded; sentence delimiters with their massive
component kept). Training runs on activations divided by one scalar c (median token norm / sqrt(d_in)),
which keeps sae-lens' default initialisation and learning rates in range. The saved SAE is then rescaled
to raw activations exactly, by multiplying its latents by c: every bias and threshold is multiplied by c,
the weights stay as trained (so unit decoder rows and the aligned constraint survive), and for cosine SAEs
the log-scale b absorbs (1 - a)·ln c.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from safetensors.torch import load_file, save_file

from evalkit.sae.registration import ensure_registered
from evalkit.sae.variants.common import CALIBRATION_BATCHES, calibrate_batch_threshold
from evalkit.world.build import World
from evalkit.world.cache import cache_root, cached_entry
from evalkit.world.zoo_init import init_from_data

# The recipe (what the zoo holds, how each size trains) is data in zoo_recipe; re-exported here for callers.
from evalkit.world.zoo_recipe import AFA_COEFFICIENTS, ZOO_SIZES, ZooEntry, ZooSize, size_entries, zoo_entries
from evalkit.world.zoo_train import CurveTrainer, record_training, write_curve

log = logging.getLogger(__name__)

# 2: top-k family with unit encoder columns; 3: outlier-aware init; 4: batch-top-k threshold calibrated;
# 5: trained until the loss levels off (curve and training facts saved), top-AFA with its AFA loss;
# 6: sae-lens random init (no copied tokens), aux-k normalized as the OpenAI reference, a fixed step budget per SAE
# (seed replicas equal), JumpReLU pre-activation loss; learning rate held at a tenth over the last 30%, the criterion
# read on fixed probe tokens; batch 256, 1200 steps; sweeps k 8/32/128, standard L1 1/4/16
# 7: d_sae 4 x d_model, batch 1024 at lr 2e-3, 1000 steps, dead window 100 steps, L1 SAEs at a quarter of the lr,
# sweeps k 4/16/64 (TopK families and cosine), top-AFA afa 1/128, 1/64, 1/32. Held-out: max dead 40.5% -> 4.3%,
# standard L1=16 duplicates 75% -> 24%, levelled off 3 -> 6 of 28, zoo build 716 -> 824 s CPU (docs/world.md)
# 8: per-family sweeps (batch-top-k k 2/16/64, aligned top-k k 3/16/64), standard L1 0.5/2/16 at an eighth of the lr,
# cosine SAEs 1,500 steps: five families bracket >= 3 of the default matched targets, explained variance 0.72-0.997
ZOO_VERSION = 8
# Inference parameters that live in activation units: they scale with c when the SAE moves to raw activations.
PROBE_SEED = 3000
SCALED_PARAMS = ("b_enc", "b_dec", "b_gate", "b_mag", "threshold")


def training_tokens(world: World) -> torch.Tensor:
    """The cached hook activations [n_tokens, d] without BOS, in a fixed order."""
    stored = load_file(str(world.activations_path))
    acts_NSD, tokens_NS = stored["activations"], stored["tokens"]
    bos = int(tokens_NS[0, 0])
    return acts_NSD[tokens_NS != bos].contiguous()


def ordinary_mask(acts_ND: torch.Tensor, cap: float | None) -> torch.Tensor:
    """True for tokens whose norm is at most `cap` x the median token norm (every token when cap is None)."""
    if cap is None:
        return torch.ones(len(acts_ND), dtype=torch.bool)
    norms_N = acts_ND.norm(dim=-1)
    return norms_N <= cap * norms_N.median()


def activation_scale(acts_ND: torch.Tensor) -> float:
    """c = median token norm / sqrt(d_in): after dividing by c a typical token has norm sqrt(d_in)."""
    return float(acts_ND.norm(dim=-1).median()) / math.sqrt(acts_ND.shape[-1])


def _batches(acts_ND: torch.Tensor, batch_size: int, seed: int, on_step: object) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts_ND), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            on_step()  # type: ignore[operator]
            yield acts_ND[order[i : i + batch_size]]


def training_set(all_ND: torch.Tensor, zoo: ZooSize) -> tuple[torch.Tensor, float]:
    """(the tokens a zoo SAE trains on: `zoo.train_norm_cap` applied, c) for the world's tokens `all_ND`; c comes from
    every token, so the scale and the saved units never depend on the cap."""
    return all_ND[ordinary_mask(all_ND, zoo.train_norm_cap)].contiguous(), activation_scale(all_ND)


def probe_tokens(scaled_ND: torch.Tensor, zoo: ZooSize) -> torch.Tensor:
    """The fixed tokens every SAE's training objective is probed on (zoo_train.CurveTrainer): the same for all SAEs."""
    order = torch.randperm(len(scaled_ND), generator=torch.Generator().manual_seed(PROBE_SEED))
    return scaled_ND[order[: zoo.probe_tokens]]


def rescale_saved_sae(folder: Path, c: float) -> None:
    """Make a saved SAE trained on x / c compute c·f(x / c) on raw x: latents ×c, output in raw units."""
    path = folder / "sae_weights.safetensors"
    state = load_file(str(path))
    cfg = json.loads((folder / "cfg.json").read_text())
    for key in SCALED_PARAMS:
        if key in state:
            state[key] = state[key] * c
    if cfg.get("architecture") == "cosine":
        state["b"] = state["b"] + (1.0 - state["a"]) * math.log(c)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _init_name(entry: ZooEntry) -> str:
    """How the SAE was initialised (evalkit.world.zoo_init), recorded in its cfg.json metadata."""
    return "sae_lens+median_b_dec" + ("+outlier_aware" if entry.outlier_init else "")


def train_one(
    entry: ZooEntry,
    acts_ND: torch.Tensor,
    c: float,
    world: World,
    zoo: ZooSize,
    out: Path,
) -> tuple[dict[str, object], torch.nn.Module]:
    """Train one SAE with sae-lens' SAETrainer on acts / c; save it (inference format, raw units) into `out`.

    Returns its record for zoo.json and the trained (training-class) SAE, which works in units of acts / c.
    """
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import SAEMetadata

    ensure_registered()
    sae_cls, cfg_cls = get_sae_training_class(entry.architecture)
    d_in = acts_ND.shape[-1]
    metadata = SAEMetadata(
        model_name=str(world.model_dir),
        hook_name=world.hook_name,
        seed=entry.seed,
        evalkit_zoo=entry.name,
        trained_on=world.fingerprint,
        activation_scale=c,
        evalkit_init=_init_name(entry),
    )
    extra = {"aux_loss_coefficient": 1 / 32} if "aux_loss_coefficient" in cfg_cls.__dataclass_fields__ else {}
    cfg = cfg_cls(
        d_in=d_in,
        d_sae=zoo.d_sae_multiple * d_in,
        dtype="float32",
        device="cpu",
        metadata=metadata,
        **{**extra, **entry.params},
    )
    torch.manual_seed(entry.seed)
    sae = sae_cls(cfg)
    init_from_data(sae, acts_ND / c, entry.outlier_init)
    trajectory: list[dict[str, float]] = []
    steps = [0]

    def on_step() -> None:
        if hasattr(sae, "a") and steps[0] % 5 == 0:
            trajectory.append(
                {
                    "step": steps[0],
                    "a_mean": float(sae.a.detach().mean()),
                    "a_median": float(sae.a.detach().median()),
                }
            )
        steps[0] += 1

    trainer_cfg = SAETrainerConfig(
        total_training_samples=entry.steps * zoo.batch_size,
        train_batch_size_samples=zoo.batch_size,
        lr=zoo.lr * entry.lr_factor,
        lr_end=zoo.lr * entry.lr_factor,
        dead_feature_window=zoo.dead_window,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=1,
    )
    data = _batches(acts_ND / c, zoo.batch_size, 1000 + entry.seed, on_step)
    t0 = time.perf_counter()
    trainer = CurveTrainer(trainer_cfg, sae, data, zoo.convergence, zoo.schedule, probe_tokens(acts_ND / c, zoo))
    trainer.fit()
    if isinstance(sae, BatchTopKTrainingSAE):  # matryoshka included
        held = _batches(acts_ND / c, zoo.batch_size, 2000 + entry.seed, lambda: None)
        calibrate_batch_threshold(sae, itertools.islice(held, CALIBRATION_BATCHES))
    seconds = time.perf_counter() - t0
    sae.save_inference_model(out)
    rescale_saved_sae(out, c)
    facts = {"trained_on": f"{world.fingerprint} {world.hook_name}, BOS excluded", "activation_scale": c}
    facts |= trainer.summary(zoo.batch_size, len(acts_ND))
    record_training(out, facts)
    write_curve(trainer.curve, out)
    record: dict[str, object] = {**asdict(entry), "train_seconds": seconds, **facts}
    if trajectory:
        trajectory.append(
            {
                "step": steps[0],
                "a_mean": float(sae.a.detach().mean()),
                "a_median": float(sae.a.detach().median()),
            }
        )
        (out / "cosine_a_trajectory.json").write_text(json.dumps(trajectory, indent=1))
        record["a_final"] = trajectory[-1]["a_mean"]
    return record, sae


def _build_zoo(folder: Path, world: World, zoo: ZooSize) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as for the world: same reduction order everywhere, no spinning threads
    try:
        _train_all(folder, world, zoo)
    finally:
        torch.set_num_threads(threads)


def _train_all(folder: Path, world: World, zoo: ZooSize) -> None:
    all_ND = training_tokens(world)
    c = activation_scale(all_ND)  # from every token: the scale and saved units never depend on the cap
    n_train = int(ordinary_mask(all_ND, zoo.train_norm_cap).sum())
    entries = size_entries(zoo, world.d_model)
    level = logging.getLogger().getEffectiveLevel()  # spawned workers start without the CLI's logging set-up
    jobs = [(entry, world, zoo, folder / entry.name, level) for entry in entries]
    if zoo.workers <= 1:
        records = [_train_job(*job) for job in jobs]
    else:
        # One process per SAE at a time: each trains on one thread from its own seed, so the result is the
        # same as training them one after another.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=zoo.workers, mp_context=context) as pool:
            records = list(pool.map(_train_job, *zip(*jobs, strict=True)))
    (folder / "zoo.json").write_text(
        json.dumps({"activation_scale": c, "n_train_tokens": n_train, "saes": records}, indent=1)
    )


_TOKENS: dict[str, torch.Tensor] = {}
"""Per process: the world's training tokens (loaded once, reused for every SAE that process trains)."""


def _train_job(
    entry: ZooEntry, world: World, zoo: ZooSize, out: Path, log_level: int = logging.INFO
) -> dict[str, object]:
    if not logging.getLogger().handlers:  # a spawned worker: log its progress like the parent
        logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")
    torch.set_num_threads(1)
    key = str(world.activations_path)
    if key not in _TOKENS:
        _TOKENS.clear()
        _TOKENS[key] = training_tokens(world)
    acts_ND, c = training_set(_TOKENS[key], zoo)
    log.info("zoo: training %s (%s, %d steps)", entry.name, entry.architecture, entry.steps)
    record = train_one(entry, acts_ND, c, world, zoo, out)[0]
    log.info(
        "zoo: %s: %d steps, final loss %.4g, levelled off %s",
        entry.name,
        record["steps"],
        record["final_loss"],
        record["converged"],
    )
    return record


def build_zoo(world: World, cache_dir: Path | str | None = None, size: str | None = None) -> Path:
    """Train (or load from the cache) the SAE zoo for `world`: a folder with one sae-lens folder per SAE."""
    size = size or world.fingerprint.split(":")[1]
    zoo = ZOO_SIZES[size if size in ZOO_SIZES else "default"]
    # Every entry's recipe is in the key, so editing zoo_entries rebuilds the zoo; ZOO_VERSION covers training code.
    entries = [asdict(e) for e in size_entries(zoo, world.d_model)]
    recipe = {k: v for k, v in asdict(zoo).items() if k != "workers"}  # the result does not depend on workers
    config = {"zoo_version": ZOO_VERSION, "world": world.fingerprint, **recipe, "entries": entries}
    root = cache_root(cache_dir) if cache_dir is not None else world.root.parent.parent
    return cached_entry(root, "zoo", config, lambda folder: _build_zoo(folder, world, zoo))


__all__ = [
    "AFA_COEFFICIENTS",
    "ZOO_SIZES",
    "ZooEntry",
    "ZooSize",
    "build_zoo",
    "rescale_saved_sae",
    "size_entries",
    "train_one",
    "training_set",
    "zoo_entries",
]
