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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from safetensors.torch import load_file, save_file

from evalkit.sae.registration import ensure_registered
from evalkit.sae.variants.common import CALIBRATION_BATCHES, calibrate_batch_threshold
from evalkit.world.build import World
from evalkit.world.cache import cache_root, cached_entry
from evalkit.world.zoo_init import init_from_data
from evalkit.world.zoo_train import Convergence, CurveTrainer, LrSchedule, record_training, write_curve

log = logging.getLogger(__name__)

# 2: top-k family with unit encoder columns; 3: outlier-aware init; 4: batch-top-k threshold calibrated;
# 5: trained until the loss levels off (curve and training facts saved), top-AFA with its AFA loss;
# 6: sae-lens random init (no copied tokens), aux-k normalized as the OpenAI reference, a fixed step budget per SAE
# (seed replicas equal), JumpReLU pre-activation loss; learning rate held at a tenth over the last 30%, the criterion
# read on fixed probe tokens; batch 256, 1200 steps; sweeps k 8/32/128, standard L1 1/4/16
# 7: d_sae 4 x d_model, batch 1024 at lr 2e-3, 1000 steps, dead window 100 steps, L1 SAEs at a quarter of the lr,
# sweeps k 4/16/64 (TopK families and cosine), top-AFA afa 1/128, 1/64, 1/32. Held-out: max dead 40.5% -> 4.3%,
# standard L1=16 duplicates 75% -> 24%, levelled off 3 -> 6 of 28, zoo build 716 -> 824 s CPU (docs/world.md)
ZOO_VERSION = 7
# Inference parameters that live in activation units: they scale with c when the SAE moves to raw activations.
PROBE_SEED = 3000
SCALED_PARAMS = ("b_enc", "b_dec", "b_gate", "b_mag", "threshold")


@dataclass(frozen=True)
class ZooEntry:
    """One SAE of the zoo: folder name, sae-lens training architecture, config fields, seed, step budget."""

    name: str
    architecture: str
    params: dict[str, float | int | str | bool | list[int]] = field(default_factory=dict)
    seed: int = 0
    steps: int = 1000
    """Its step budget, trained in full (the same for every seed of one configuration)."""
    outlier_init: bool = False
    """Start orthogonal to the massive tokens' directions (evalkit.world.zoo_init); set for the TopK family."""
    lr_factor: float = 1.0
    """Its learning rate as a multiple of ZooSize.lr (L1_LR_FACTOR for the L1-trained standard and gated SAEs)."""


# The TopK family gets the outlier-aware initialisation: on the first world without it batch-top-k k=16 ended with 75%
# dead latents (the massive tokens took the batch's slots). The other variants keep sae-lens' plain initialisation, so
# the norm-driven latents that the cosine paper describes stay visible in standard and gated SAEs (on the first world
# the outlier-aware init took standard SAEs from 24-68 norm detectors to 0-1, gated from 57 to 0).
OUTLIER_INIT_ARCHITECTURES = frozenset(
    {"unit_enc_topk", "unit_enc_batchtopk", "unit_enc_matryoshka_batchtopk", "aligned_topk"}
)


STANDARD_L1 = (1.0, 4.0, 16.0)
L1_LR_FACTOR = 0.25
"""L1-trained SAEs (standard, gated) train at a quarter of the zoo's learning rate. Why: at 2e-3 (batch 1024, d_sae 512)
co-firing copies formed (pairs of latents with |cos| > 0.99 between decoder rows, Jaccard 0.8 between their firing
sets, encoder cos 0.9): standard L1=4 had 51% of its latents in such pairs, L1=16 64%, gated 8%; at 5e-4 L1=4 had
2.7% and L1=1 none. The L1 penalty is indifferent to splitting one feature over identical copies, so copies that the
large early Adam steps pull onto one direction stay together; the L1 recipes train at low rates (Anthropic's April 2024
update: 5e-5 at batch 4096 on unit-scale inputs)."""
AFA_COEFFICIENTS = (1 / 128, 1 / 64, 1 / 32)
"""Three of the top-AFA reference's five afa_coeff values (1/128, 1/64, 1/32, 1/24, 1/16), spanning them."""


def _sweep(prefix: str, arch: str, key: str, values: tuple[float, ...], steps: int, **extra: object) -> list[ZooEntry]:
    return [ZooEntry(f"{prefix}_{key}{v:g}", arch, {key: v, **extra}, 0, steps) for v in values]  # type: ignore[dict-item]


def _seeds(prefix: str, arch: str, params: dict[str, object], seeds: tuple[int, ...], steps: int) -> list[ZooEntry]:
    tag = f"k{params['k']:g}"  # names stay stable when recipe fields (e.g. decoder_init_norm) are added
    return [ZooEntry(f"{prefix}_{tag}_seed{s}", arch, dict(params), s, steps) for s in seeds]  # type: ignore[arg-type]


def zoo_entries(
    d_sae: int,
    steps: int = 1000,
    ks: tuple[int, ...] = (4, 16, 64),
    afa_coefficients: tuple[float, ...] = AFA_COEFFICIENTS,
    cosine_ks: tuple[int, ...] | None = None,
) -> list[ZooEntry]:
    """The zoo of docs/world.md: every variant; sparsity sweeps for standard/topk/batchtopk/cosine/aligned topk and
    an AFA-coefficient sweep for top-AFA; 3 seeds for topk, aligned topk and cosine (at the middle k; seed 0 is
    the sweep's own member). `steps` is each SAE's step budget (seed replicas included)."""
    mid = ks[len(ks) // 2]
    cosine_ks = cosine_ks or ks
    cos_mid = cosine_ks[len(cosine_ks) // 2]
    widths = [d_sae // 16, d_sae // 4, d_sae]
    # sae-lens rescales TopK latents by decoder norms by default; here that left ~1.5x more dead latents.
    plain = {"rescale_acts_by_decoder_norm": False}
    # Unit encoder columns (evalkit.sae.variants.unit_encoder.UnitEncoderMixin): latents compete on direction, not on a
    # grown encoder norm. On the first world, held-out dead share: topk k16/32/64 32/13/8% -> 2/0.2/0.1%,
    # batchtopk k32/64 50/15% -> 6/1%, matryoshka 58% -> 10%. Decoder rows start at norm 0.3 (sae-lens: 0.1):
    # the decoder now carries all of a latent's scale (k16 dead 55% at 0.1 vs 2% at 0.3).
    unit_enc = {**plain, "decoder_init_norm": 0.3}
    entries = [
        *[
            replace(e, lr_factor=L1_LR_FACTOR)
            for e in _sweep("standard", "standard", "l1_coefficient", STANDARD_L1, steps)
        ],
        *_sweep("topk", "unit_enc_topk", "k", tuple(float(k) for k in ks), steps, **unit_enc),
        *_seeds("topk", "unit_enc_topk", {"k": mid, **unit_enc}, (1, 2), steps),
        *_sweep("batchtopk", "unit_enc_batchtopk", "k", tuple(float(k) for k in ks), steps, **unit_enc),
        ZooEntry(
            f"matryoshka_k{mid}",
            "unit_enc_matryoshka_batchtopk",
            {"k": mid, "matryoshka_widths": widths, **unit_enc},
            0,
            steps,
        ),
        # The JumpReLU threshold starts at 0.5 (sae-lens: 0.01-0.1): in short runs a low start left every
        # latent dense (l0 309). Anthropic's pre-activation loss (sae-lens pre_act_loss_coefficient) pushes dead
        # latents' pre-activations up to their threshold: without it 44% of latents were dead after 1000 steps,
        # with 3e-3 none (Anthropic's 3e-6 is for their loss scale).
        ZooEntry(
            "jumprelu",
            "jumprelu",
            {"l0_coefficient": 2.0, "jumprelu_init_threshold": 0.5, "pre_act_loss_coefficient": 3e-3},
            0,
            steps,
        ),
        ZooEntry("gated", "gated", {"l1_coefficient": 3.0}, 0, steps, lr_factor=L1_LR_FACTOR),
        *_sweep("cosine", "cosine", "k", tuple(float(k) for k in cosine_ks), steps),
        *_seeds("cosine", "cosine", {"k": cos_mid}, (1, 2), steps),
        ZooEntry(f"cosine_perfeature_k{cos_mid}", "cosine", {"k": cos_mid, "per_feature": True}, 0, steps),
        *_sweep("aligned_topk", "aligned_topk", "k", tuple(float(k) for k in ks), steps),
        *_seeds("aligned_topk", "aligned_topk", {"k": mid}, (1, 2), steps),
        # Top-AFA trained with its AFA loss, as the reference's experiments (afa_coeff 1/128 ... 1/16); its
        # config default 0.0 is plain top-k-by-norm training, not a top-AFA run.
        *[ZooEntry(f"topafa_afa{_frac(a)}", "topafa", {"afa_loss_coefficient": a}, 0, steps) for a in afa_coefficients],
    ]
    # Integer k for every top-k family member (sae-lens topk wants an int).
    return [
        replace(
            e,
            name=e.name.replace(".0", ""),
            params=_int_k(e.params),
            outlier_init=e.architecture in OUTLIER_INIT_ARCHITECTURES,
        )
        for e in entries
    ]


def _frac(a: float) -> str:
    """1/32 -> '1_32' (folder names without dots)."""
    return f"1_{round(1 / a)}" if a > 0 else "0"


def _int_k(params: dict[str, object]) -> dict[str, object]:
    return {k: (int(v) if k == "k" else v) for k, v in params.items()}  # type: ignore[misc]


@dataclass(frozen=True)
class ZooSize:
    d_sae_multiple: int = 4
    """4 x d_model (docs/world.md: at the same CPU, 900 steps of 1,024 tokens at d_sae 512 took top-k k=32 to FVU
    0.0039 against 0.0062 for 1,200 steps of 256 at d_sae 1,024, and top-k k=8 from 40.5% dead latents to 0.4%)."""
    steps: int = 1000
    """Each SAE's step budget (all of it is trained); `convergence` says whether the loss had levelled off."""
    convergence: Convergence = field(default_factory=Convergence)
    workers: int = 2
    """SAEs trained at once, one process and one thread each (the result does not depend on it)."""
    batch_size: int = 1024
    lr: float = 2e-3
    schedule: LrSchedule = field(default_factory=LrSchedule)
    probe_tokens: int = 2048
    """Fixed tokens on which the training objective is evaluated every 50 steps for the levelling-off criterion."""
    ks: tuple[int, ...] = (4, 16, 64)
    """k of the TopK families' sweeps (topk, batch-top-k, aligned top-k); seeds and matryoshka at the middle one."""
    cosine_ks: tuple[int, ...] | None = (4, 16, 64)
    """k of the cosine sweep (default: `ks`); seeds and the per-feature cosine SAE at the middle one."""
    dead_window: int = 100
    """Steps without firing after which a latent counts as dead for the auxiliary-k loss. 100 steps of 1,024 tokens:
    at 20 steps the aux loss also pulled rare but live latents toward the residual, which the heavy-tail tokens
    dominate (top-k k=4, d_sae 512, held-out dead share 23% at 20 steps, 9.8% at 100, 14.5% at 400)."""
    train_norm_cap: float | None = None
    """When set, training (not evaluation) drops tokens whose norm exceeds this multiple of the median, as
    the cosine paper trained. Off by default. On the first world (one fixed massive vector on the sentence
    delimiters, 120-step training) at 10 ("capped") dead latents fell (batchtopk k=16 76% -> 14%,
    topk k=32 13% -> 7%) and FVU on ordinary tokens improved, but the massive tokens, 8% of evaluation
    tokens and most of its variance, went unreconstructed (FVU over all tokens 0.0004-0.004 -> 0.5-1.07)
    and batch-top-k thresholds fired ~600 latents on them. `benchmarks/bench_world.py --zoo-size capped`."""


ZOO_SIZES = {
    "default": ZooSize(),
    "capped": ZooSize(train_norm_cap=10.0),
    "small": ZooSize(
        d_sae_multiple=4,
        steps=60,
        convergence=Convergence(min_steps=20),
        workers=1,
        batch_size=64,
        lr=1e-3,
        ks=(4, 8, 12),
        cosine_ks=None,
        dead_window=20,
        probe_tokens=128,
    ),
}


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
    entries = zoo_entries(zoo.d_sae_multiple * world.d_model, zoo.steps, zoo.ks, cosine_ks=zoo.cosine_ks)
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
    all_ND = _TOKENS[key]
    c = activation_scale(all_ND)
    acts_ND = all_ND[ordinary_mask(all_ND, zoo.train_norm_cap)].contiguous()
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
    entries = [
        asdict(e) for e in zoo_entries(zoo.d_sae_multiple * world.d_model, zoo.steps, zoo.ks, cosine_ks=zoo.cosine_ks)
    ]
    recipe = {k: v for k, v in asdict(zoo).items() if k != "workers"}  # the result does not depend on workers
    config = {"zoo_version": ZOO_VERSION, "world": world.fingerprint, **recipe, "entries": entries}
    root = cache_root(cache_dir) if cache_dir is not None else world.root.parent.parent
    return cached_entry(root, "zoo", config, lambda folder: _build_zoo(folder, world, zoo))


__all__ = ["ZOO_SIZES", "ZooEntry", "build_zoo", "rescale_saved_sae", "zoo_entries"]
