"""A Hugging Face cache filled by hand, laid out as huggingface_hub and datasets lay it out, for offline tests.

- Hub repos (models, SAE releases): `<hub>/models--ORG--NAME/{refs/main, blobs/<sha256>, snapshots/<commit>/...}`,
  every snapshot file a relative symlink to its blob, as `hf_hub_download` leaves them.
- Datasets: what `datasets` writes after a first `load_dataset(NAME)`, i.e. a prepared arrow cache
  `<datasets>/ORG___NAME/default/0.0.0/<commit>/{dataset_info.json, NAME-train.arrow}`; offline,
  `load_dataset(NAME, streaming=True)` streams from it.
- GPT-2: the real `config.json` of `gpt2` (optionally at a smaller shape) with random weights, and a byte-level BPE
  tokenizer built here (a few hundred merges learnt from a small text, `<|endoftext|>` at GPT-2's id 50256).
- SAEs of sae-lens' registry where sae-lens' directory says they live (repo and folder from pretrained_saes.yaml):
  the default `cfg.json` + `sae_weights.safetensors` layout and Gemma Scope's `params.npz`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMMIT = "5a1e5a1e" * 5
"""The commit every hand-filled repo's refs/main points to."""
EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB = 50257
TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features in the activations of "
    "language models. A residual stream carries information between the layers of a transformer. "
)


@dataclass(frozen=True)
class HfCache:
    """Where the hand-filled cache lives (HF_HOME, HF_HUB_CACHE, HF_DATASETS_CACHE)."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def env(self) -> dict[str, str]:
        """The environment a user sets to work offline from this cache."""
        return {
            "HF_HOME": str(self.home),
            "HF_HUB_CACHE": str(self.hub),
            "HF_DATASETS_CACHE": str(self.datasets),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }


@contextmanager
def offline(cache: HfCache) -> Iterator[None]:
    """In-process equivalent of `cache.env()`: the libraries read these module constants at call time (they were
    set from the environment at import), so tests patch them instead of the environment alone."""
    import datasets.config
    from huggingface_hub import constants

    patches = [
        (constants, "HF_HUB_CACHE", str(cache.hub)),
        (constants, "HF_HUB_OFFLINE", True),
        (datasets.config, "HF_DATASETS_CACHE", cache.datasets),
        (datasets.config, "HF_HUB_OFFLINE", True),
        (datasets.config, "HF_DATASETS_OFFLINE", True),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    saved_env = {k: os.environ.get(k) for k in cache.env()}
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        os.environ.update(cache.env())
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def add_hub_repo(cache: HfCache, repo_id: str, files: dict[str, Path | bytes], repo_type: str = "model") -> Path:
    """Put `files` (path in the repo -> file to move in, or bytes) into the hub cache; returns the snapshot."""
    repo_dir = cache.hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    for rel, content in files.items():
        data_path = None if isinstance(content, bytes) else Path(content)
        digest = hashlib.sha256()
        if data_path is None:
            digest.update(content)  # type: ignore[arg-type]
        else:
            with open(data_path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(chunk)
        blob = repo_dir / "blobs" / digest.hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            if data_path is None:
                blob.write_bytes(content)  # type: ignore[arg-type]
            else:
                shutil.move(str(data_path), blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def gpt2_tokenizer(merges_vocab: int = 400):  # -> transformers.PreTrainedTokenizerFast
    """A GPT-2-style byte-level BPE tokenizer: 256 byte symbols, merges learnt from TOKENIZER_TEXT, and
    `<|endoftext|>` (BOS = EOS) at GPT-2's id 50256, so every id is a valid row of a 50,257-token embedding."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=merges_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    base.train_from_iterator([TOKENIZER_TEXT] * 20, trainer)
    model = json.loads(base.to_str())["model"]
    vocab = {**model["vocab"], EOT: GPT2_EOT_ID}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def gpt2_config(n_layer: int = 12, n_embd: int = 768, n_head: int = 12, n_positions: int = 1024) -> dict:
    """GPT-2 small's config.json as the hub serves it (defaults: the real shape)."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": GPT2_EOT_ID,
        "embd_pdrop": 0.1,
        "eos_token_id": GPT2_EOT_ID,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": GPT2_VOCAB,
    }


def add_gpt2(cache: HfCache, work: Path, seed: int = 0, **shape: int) -> Path:
    """`gpt2` in the hub cache: the real config (at `shape`), random weights, the local tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    src = work / "gpt2-src"
    config = gpt2_config(**shape)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config))
    model.save_pretrained(src)
    gpt2_tokenizer().save_pretrained(src)
    (src / "config.json").write_text(json.dumps(config, indent=2))
    files = {p.name: p for p in src.iterdir() if p.is_file()}
    snapshot = add_hub_repo(cache, "gpt2", files)
    shutil.rmtree(src)
    return snapshot


def registry_location(release: str, sae_id: str) -> tuple[str, str]:
    """(repo_id, folder) of a registry SAE, read from sae-lens' own pretrained_saes.yaml."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory()[release]
    return lookup.repo_id, lookup.saes_map[sae_id]


def add_saelens_release_sae(
    cache: HfCache, release: str, sae_id: str, cfg: dict, weights: dict[str, torch.Tensor], work: Path
) -> Path:
    """A registry SAE in sae-lens' default layout: FOLDER/cfg.json + FOLDER/sae_weights.safetensors."""
    from safetensors.torch import save_file

    repo_id, folder = registry_location(release, sae_id)
    work.mkdir(parents=True, exist_ok=True)
    weights_path = work / "sae_weights.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(weights_path))
    files: dict[str, Path | bytes] = {
        f"{folder}/cfg.json": json.dumps(cfg).encode(),
        f"{folder}/sae_weights.safetensors": weights_path,
    }
    return add_hub_repo(cache, repo_id, files)


def add_gemma_scope_sae(cache: HfCache, release: str, sae_id: str, params: dict[str, np.ndarray], work: Path) -> Path:
    """A Gemma Scope SAE as Google publishes it: FOLDER/params.npz with w_enc, w_dec, b_enc, b_dec, threshold."""
    repo_id, folder = registry_location(release, sae_id)
    work.mkdir(parents=True, exist_ok=True)
    npz = work / "params.npz"
    np.savez(npz, **params)
    return add_hub_repo(cache, repo_id, {f"{folder}/params.npz": npz})


def add_text_dataset(cache: HfCache, name: str, records: Iterable[dict], work: Path) -> Path:
    """`name` in the datasets cache, as `load_dataset(name)` leaves it after one online call (a prepared arrow
    dataset, config `default`); returns its folder."""
    from datasets.packaged_modules.json.json import Json

    work.mkdir(parents=True, exist_ok=True)
    src = work / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    short = name.split("/")[-1]
    builder = Json(data_files={"train": str(src)}, dataset_name=short, cache_dir=str(work / "build"))
    builder.download_and_prepare()
    target = cache.datasets / name.replace("/", "___") / "default" / "0.0.0" / COMMIT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(builder.cache_dir, target)
    shutil.rmtree(work / "build", ignore_errors=True)
    return target
