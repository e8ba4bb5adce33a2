"""The zoo's recipe: which SAEs it holds (`zoo_entries`) and how each size trains them (`ZooSize`, `ZOO_SIZES`).

Data only: evalkit.world.zoo trains what this module lists, and keys its cache on these values (every field of
every entry and of the size's recipe), so any edit here rebuilds the zoo.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from evalkit.world.zoo_train import Convergence, LrSchedule


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
