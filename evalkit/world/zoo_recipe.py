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
    """Its learning rate as a multiple of ZooSize.lr (STANDARD_LR_FACTOR / L1_LR_FACTOR for the L1-trained standard
    and gated SAEs, PER_FEATURE_LR_FACTOR for the per-feature cosine SAE)."""


# The TopK family gets the outlier-aware initialisation: on the first world without it batch-top-k k=16 ended with 75%
# dead latents (the massive tokens took the batch's slots). The other variants keep sae-lens' plain initialisation, so
# the norm-driven latents that the cosine paper describes stay visible in standard and gated SAEs (on the first world
# the outlier-aware init took standard SAEs from 24-68 norm detectors to 0-1, gated from 57 to 0).
OUTLIER_INIT_ARCHITECTURES = frozenset(
    {"unit_enc_topk", "unit_enc_batchtopk", "unit_enc_matryoshka_batchtopk", "aligned_topk"}
)


STANDARD_L1 = (0.5, 2.0, 16.0)
"""The standard SAEs' L1 coefficients (at STANDARD_LR_FACTOR): FVU 0.014, 0.039 and 0.28 on the default world, so the
family brackets the matched targets and reaches the high-FVU end (explained variance 0.72)."""
L1_LR_FACTOR = 0.25
"""Gated SAEs train at a quarter of the zoo's learning rate, standard SAEs at an eighth (STANDARD_LR_FACTOR). Why: at
2e-3 (batch 1024, d_sae 512) co-firing copies formed (pairs of latents with |cos| > 0.99 between decoder rows, Jaccard
0.8 between their firing sets, encoder cos 0.9): standard L1=4 had 51% of its latents in such pairs, L1=16 64%, gated
8%; at a quarter (5e-4) L1=4 had 2.9%, L1=16 24%, gated 0.4%; at an eighth (2.5e-4) standard L1=0.5 ... 16 have none.
The L1 penalty is indifferent to splitting one feature over identical copies, so copies that the large early Adam
steps pull onto one direction stay together; the L1 recipes train at low rates (Anthropic's April 2024 update: 5e-5 at
batch 4096 on unit-scale inputs)."""
STANDARD_LR_FACTOR = 0.125
PER_FEATURE_LR_FACTOR = 2.0
"""The per-feature cosine SAE trains at twice the zoo's learning rate. Its duplicate decoder pairs are rare latents
(firing on ~0.1% of tokens, heavy-tail tokens ~7x the median norm) that fire together; unlike the L1 copies they
grow with a lower rate: latents in pairs with |cos| > 0.99 at 1,000 steps 6.1% / 1.8% / 1.4% at half / one / twice the
rate, at 1,500 steps 1.2% at one and 0.8% at twice the rate."""
AFA_COEFFICIENTS = (1 / 128, 1 / 64, 1 / 32)
"""Three of the top-AFA reference's five afa_coeff values (1/128, 1/64, 1/32, 1/24, 1/16), spanning them."""


def _sweep(prefix: str, arch: str, key: str, values: tuple[float, ...], steps: int, **extra: object) -> list[ZooEntry]:
    # 0.5 -> "0_5": folder names without dots
    return [
        ZooEntry(f"{prefix}_{key}{v:g}".replace(".", "_"), arch, {key: v, **extra}, 0, steps)  # type: ignore[dict-item]
        for v in values
    ]


def _seeds(prefix: str, arch: str, params: dict[str, object], seeds: tuple[int, ...], steps: int) -> list[ZooEntry]:
    tag = f"k{params['k']:g}"  # names stay stable when recipe fields (e.g. decoder_init_norm) are added
    return [ZooEntry(f"{prefix}_{tag}_seed{s}", arch, dict(params), s, steps) for s in seeds]  # type: ignore[arg-type]


def zoo_entries(
    d_sae: int,
    steps: int = 1000,
    ks: tuple[int, ...] = (4, 16, 64),
    afa_coefficients: tuple[float, ...] = AFA_COEFFICIENTS,
    cosine_ks: tuple[int, ...] | None = None,
    *,
    batchtopk_ks: tuple[int, ...] | None = None,
    aligned_ks: tuple[int, ...] | None = None,
    cosine_steps: int | None = None,
) -> list[ZooEntry]:
    """The zoo of docs/world.md: every variant; sparsity sweeps for standard/topk/batchtopk/cosine/aligned topk and
    an AFA-coefficient sweep for top-AFA; 3 seeds for topk, aligned topk and cosine (at the middle k; seed 0 is
    the sweep's own member). `ks` is the top-k sweep, and the default of the batch-top-k, aligned top-k and cosine
    sweeps; `steps` is each SAE's step budget (seed replicas included), `cosine_steps` the cosine SAEs' (global
    and per-feature; default `steps`)."""
    mid = ks[len(ks) // 2]
    batchtopk_ks = batchtopk_ks or ks
    aligned_ks = aligned_ks or ks
    aligned_mid = aligned_ks[len(aligned_ks) // 2]
    cosine_ks = cosine_ks or ks
    cos_mid = cosine_ks[len(cosine_ks) // 2]
    cosine_steps = cosine_steps or steps
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
            replace(e, lr_factor=STANDARD_LR_FACTOR)
            for e in _sweep("standard", "standard", "l1_coefficient", STANDARD_L1, steps)
        ],
        *_sweep("topk", "unit_enc_topk", "k", tuple(float(k) for k in ks), steps, **unit_enc),
        *_seeds("topk", "unit_enc_topk", {"k": mid, **unit_enc}, (1, 2), steps),
        *_sweep("batchtopk", "unit_enc_batchtopk", "k", tuple(float(k) for k in batchtopk_ks), steps, **unit_enc),
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
        *_sweep("cosine", "cosine", "k", tuple(float(k) for k in cosine_ks), cosine_steps),
        *_seeds("cosine", "cosine", {"k": cos_mid}, (1, 2), cosine_steps),
        ZooEntry(
            f"cosine_perfeature_k{cos_mid}",
            "cosine",
            {"k": cos_mid, "per_feature": True},
            0,
            cosine_steps,
            lr_factor=PER_FEATURE_LR_FACTOR,
        ),
        *_sweep("aligned_topk", "aligned_topk", "k", tuple(float(k) for k in aligned_ks), steps),
        *_seeds("aligned_topk", "aligned_topk", {"k": aligned_mid}, (1, 2), steps),
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
    """k of the top-k sweep (and of the other sweeps left at None); seeds and matryoshka at the middle one."""
    batchtopk_ks: tuple[int, ...] | None = (2, 16, 64)
    """k of the batch-top-k sweep (default: `ks`). k=2, not 4: at k=4 the family ended at FVU 0.010 and bracketed no
    default matched target; k=2 reaches 0.028 with 1.6% dead latents."""
    aligned_ks: tuple[int, ...] | None = (3, 16, 64)
    """k of the aligned top-k sweep (default: `ks`); seeds at the middle one. k=3: FVU 0.019, 1.6% dead (k=4: 0.010;
    k=2: 65% dead). Top-k itself stays at k=4 (FVU 0.020): at k=3 26% of its latents died (the auxiliary-k
    coefficient, a per-token auxiliary residual and lower learning rates left 26-31%)."""
    cosine_ks: tuple[int, ...] | None = (4, 16, 64)
    """k of the cosine sweep (default: `ks`); seeds and the per-feature cosine SAE at the middle one."""
    cosine_steps: int | None = 1500
    """The cosine SAEs' step budget (default: `steps`). At 1,000 steps they were the furthest from levelling off (probe
    loss still falling 2-9% per 10% window) and k=4 ended at FVU 0.037, k=16 at 0.014 with 4.3% / 2% dead latents;
    at 1,500: 0.025 and 0.011 with 1.0% / 0.6%."""
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
        batchtopk_ks=None,
        aligned_ks=None,
        cosine_ks=None,
        cosine_steps=None,
        dead_window=20,
        probe_tokens=128,
    ),
}


def size_entries(zoo: ZooSize, d_model: int) -> list[ZooEntry]:
    """The entries one zoo size trains (d_sae = d_sae_multiple x d_model)."""
    return zoo_entries(
        zoo.d_sae_multiple * d_model,
        zoo.steps,
        zoo.ks,
        cosine_ks=zoo.cosine_ks,
        batchtopk_ks=zoo.batchtopk_ks,
        aligned_ks=zoo.aligned_ks,
        cosine_steps=zoo.cosine_steps,
    )
