"""`build_world`: corpus, tokenizer, tiny model and cached hook activations, as one cached entry."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast

from evalkit.core.errors import EvalkitInputError
from evalkit.world.cache import cache_root, cached_entry, config_hash
from evalkit.world.corpus import CONCEPTS, generate_corpus, labels_bool, unigram_entropy
from evalkit.world.massive import TailSpec, plant_tail
from evalkit.world.model import ModelSpec, heldout_loss, load_world_model, save_model, train_model
from evalkit.world.tokenizer import load_tokenizer, save_tokenizer
from metrics.norm import OUTLIER_MULTIPLE

log = logging.getLogger(__name__)

# 3: BOS >= 100x median; context-dependent tail on ordinary tokens (evalkit.world.massive)
# 4: the tail mixes 96 directions (read directions overlapping), quantiles per direction on 1024 sequences
WORLD_VERSION = 4


@dataclass(frozen=True)
class WorldSize:
    """How much to build. Splits of one generated corpus: train | heldout | eval | sae (activations for the
    zoo)."""

    n_train: int
    n_heldout: int
    n_eval: int
    n_sae: int
    model: ModelSpec
    seq_len: int = 128
    corpus_seed: int = 0


SIZES: dict[str, WorldSize] = {
    "default": WorldSize(
        n_train=5000,
        n_heldout=64,
        n_eval=512,
        n_sae=1536,
        # 600 steps of 8 x 128 tokens: a couple of minutes on 2 cores; the loss is still falling at the end.
        model=ModelSpec(steps=600, batch_size=8, eval_every=50, massive_value_bos=9000.0),
    ),
    # For tests: a 2-layer d_model-32 model trained for a few steps; same code path, seconds instead of
    # minutes.
    "small": WorldSize(
        n_train=256,
        n_heldout=16,
        n_eval=32,
        n_sae=64,
        seq_len=32,
        model=ModelSpec(
            n_layers=2,
            d_model=32,
            n_heads=2,
            d_mlp=64,
            n_ctx=32,
            steps=20,
            batch_size=8,
            eval_every=10,
            lr=3e-3,
            warmup_steps=5,
            massive_dims=(3, 11, 20),
            massive_value_bos=600.0,
            # 8 groups from 4 read dimensions; quantiles low enough that ~1,000 evaluation tokens show a tail
            tail=TailSpec(n_directions=8, read_rank=4, anchors=((0.95, 0.0), (0.99, 3.0), (0.999, 12.0))),
        ),
    ),
}


@dataclass(frozen=True)
class World:
    """Paths and facts of a built world. The model folder holds weights, config and tokenizer."""

    root: Path
    model_dir: Path
    corpus_path: Path
    eval_text_path: Path
    labels_path: Path
    activations_path: Path
    hook_name: str
    d_model: int
    seq_len: int
    fingerprint: str
    info: dict[str, object] = field(default_factory=dict)

    @property
    def tokenizer_dir(self) -> Path:
        return self.model_dir


def _build_config(size: WorldSize) -> dict[str, object]:
    return {"world_version": WORLD_VERSION, **asdict(size)}


def _splits(size: WorldSize) -> dict[str, tuple[int, int]]:
    bounds, start = {}, 0
    for name, n in (
        ("train", size.n_train),
        ("heldout", size.n_heldout),
        ("eval", size.n_eval),
        ("sae", size.n_sae),
    ):
        bounds[name] = (start, start + n)
        start += n
    return bounds


@torch.no_grad()
def hook_activations(
    model: torch.nn.Module,
    tokens_NS: torch.Tensor,
    hook_name: str,
    batch_size: int = 32,
) -> torch.Tensor:
    """Run the model up to `hook_name` (stopping there) and return the activations [n_seq, seq_len, d]."""
    layer = int(hook_name.split(".")[1]) + 1 if hook_name.startswith("blocks.") else None
    out = []
    for i in range(0, len(tokens_NS), batch_size):
        _, cache = model.run_with_cache(tokens_NS[i : i + batch_size], names_filter=hook_name, stop_at_layer=layer)
        out.append(cache[hook_name].float().cpu())
    return torch.cat(out)


PCA_DIMS = (6, 32)
"""Subspace sizes for `pca_variance_share` (6: the previous world's tail span)."""


def norm_stats(
    acts_NSD: torch.Tensor,
    tokens_NS: torch.Tensor,
    tokenizer: PreTrainedTokenizerFast,
    planted: tuple[str, ...],
    pca_dims: tuple[int, ...] = PCA_DIMS,
) -> dict[str, object]:
    """Norm figures at the hook over ordinary tokens (the planted special tokens, BOS, excluded as evaluation
    excludes them), and each planted token's mean norm.

    `variance_share_above_10x`: the share of Σ‖x − mean‖² held by tokens above OUTLIER_MULTIPLE x the median.
    `pca_variance_share`: the share of Σ‖x − mean‖² inside the best k-dimensional subspace (top principal
    components), for k in `pca_dims`: a heavy tail confined to a few directions would show here as a large share.
    """
    norms_NS = acts_NSD.norm(dim=-1)
    planted_ids = torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in planted])
    ordinary_NS = ~torch.isin(tokens_NS, planted_ids)
    acts_TD = acts_NSD[ordinary_NS].double()
    norms_T = acts_TD.norm(dim=-1)
    median = float(norms_T.median())
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)
    per_class = {}
    for tok in planted:
        mask = tokens_NS == tokenizer.convert_tokens_to_ids(tok)
        if mask.any():
            per_class[tok] = float(norms_NS[mask].mean())
    centred_TD = acts_TD - acts_TD.mean(0)
    variance_T = centred_TD.pow(2).sum(-1)
    above_T = norms_T > OUTLIER_MULTIPLE * median
    eigen_D = torch.linalg.eigvalsh(centred_TD.T @ centred_TD).flip(0).clamp_min(0)
    return {
        "n_tokens": int(len(norms_T)),
        "quantiles": {str(q): float(torch.quantile(norms_T, q)) for q in qs},
        "median": median,
        "mean_over_median": float(norms_T.mean()) / median,
        "max_over_median": float(norms_T.max()) / median,
        "frac_above_10x": float(above_T.double().mean()),
        "variance_share_above_10x": float(variance_T[above_T].sum() / variance_T.sum()),
        "pca_variance_share": {str(k): float(eigen_D[:k].sum() / eigen_D.sum()) for k in pca_dims},
        "planted_norm": per_class,
        "planted_over_median": {k: v / median for k, v in per_class.items()},
    }


CALIBRATION_SEQUENCES = 1024
"""Training sequences whose projections fix the tail's quantiles (evalkit.world.massive): 130k tokens, so
even a 0.99995 quantile rests on several tokens."""


def _plant_tail(model: torch.nn.Module, part: dict[str, np.ndarray], size: WorldSize) -> dict[str, float]:
    """Plant the ordinary tokens' heavy tail after training; returns the held-out loss with it planted."""
    calibration = torch.from_numpy(part["train"][:CALIBRATION_SEQUENCES].astype(np.int64))
    acts = hook_activations(model, calibration, size.model.hook_name)[:, 1:]
    plant_tail(model, calibration, float(acts.norm(dim=-1).median()), size.model.tail)
    heldout = torch.from_numpy(part["heldout"].astype(np.int64))
    return {"step": size.model.steps, "heldout_loss": heldout_loss(model, heldout), "tail_planted": 1.0}


def _build(folder: Path, size: WorldSize) -> None:
    # One thread: float reductions then happen in the same order on every machine (bit-identical builds), and
    # on a shared 2-core box a single thread is several times faster than two threads spinning against others.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _build_all(folder, size)
    finally:
        torch.set_num_threads(threads)


def _build_all(folder: Path, size: WorldSize) -> None:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    splits = _splits(size)
    corpus = generate_corpus(sum(size.__dict__[f"n_{s}"] for s in splits), size.seq_len, size.corpus_seed)
    timings["corpus"] = time.perf_counter() - t0
    part = {name: corpus.tokens_NS[a:b] for name, (a, b) in splits.items()}
    save_file(
        {
            "tokens": torch.from_numpy(corpus.tokens_NS.astype(np.int64)),
            "label_bits": torch.from_numpy(corpus.label_bits_NS),
        },
        str(folder / "corpus.safetensors"),
        # one metadata key: safetensors writes metadata from a hash map, so several keys come in random order
        metadata={"corpus": json.dumps({"splits": splits, "concepts": list(CONCEPTS)})},
    )
    a, b = splits["eval"]
    (folder / "eval.txt").write_text("\n".join(corpus.texts(a, b)) + "\n")
    eval_labels = labels_bool(corpus.label_bits_NS[a:b]).reshape(-1, len(CONCEPTS)).astype(np.uint8)
    save_file(
        {"labels": torch.from_numpy(eval_labels)},
        str(folder / "eval_labels.safetensors"),
        metadata={"label_names": json.dumps(list(CONCEPTS))},
    )

    t0 = time.perf_counter()
    model_dir = folder / "model"
    save_tokenizer(corpus.vocab, model_dir)
    tokenizer = load_tokenizer(model_dir)
    timings["tokenizer"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, history = train_model(part["train"], part["heldout"], size.model, tokenizer)
    timings["model_training"] = time.perf_counter() - t0
    history.append(_plant_tail(model, part, size))
    entropy = unigram_entropy(part["train"], len(corpus.vocab))
    save_model(model, size.model, model_dir, {"history": history, "unigram_entropy": entropy})

    t0 = time.perf_counter()
    model = load_world_model(model_dir)  # from disk, so the activations are exactly what users' loads produce
    sae_tokens = torch.from_numpy(part["sae"].astype(np.int64))
    acts = hook_activations(model, sae_tokens, size.model.hook_name)
    save_file(
        {"activations": acts.contiguous(), "tokens": sae_tokens},
        str(folder / "sae_activations.safetensors"),
        metadata={"hook_name": size.model.hook_name},
    )
    eval_tokens = torch.from_numpy(part["eval"].astype(np.int64))
    eval_acts = hook_activations(model, eval_tokens, size.model.hook_name)
    timings["activations"] = time.perf_counter() - t0
    stats = norm_stats(eval_acts, eval_tokens, tokenizer, size.model.planted_tokens)
    info = {
        "timings_s": timings,
        "history": history,
        "unigram_entropy": entropy,
        "norms": stats,
        "vocab_size": len(corpus.vocab),
        "splits": splits,
    }
    (folder / "world.json").write_text(json.dumps(info, indent=1))


def build_world(cache_dir: Path | str | None = None, size: str = "default") -> World:
    """Build (or load from the cache) the embedded world; deterministic for a given size."""
    if size not in SIZES:
        raise EvalkitInputError("--size", f"unknown world size {size!r}; known: {', '.join(SIZES)}")
    spec = SIZES[size]
    config = _build_config(spec)
    root = cached_entry(cache_root(cache_dir), "world", config, lambda folder: _build(folder, spec))
    info = json.loads((root / "world.json").read_text())
    return World(
        root=root,
        model_dir=root / "model",
        corpus_path=root / "corpus.safetensors",
        eval_text_path=root / "eval.txt",
        labels_path=root / "eval_labels.safetensors",
        activations_path=root / "sae_activations.safetensors",
        hook_name=spec.model.hook_name,
        d_model=spec.model.d_model,
        seq_len=spec.seq_len,
        fingerprint=f"world:{size}:{config_hash(config)}",
        info=info,
    )
