"""The SAE zoo: its composition, and that each variant trains with SAETrainer and loads back with sae-lens."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from sae_lens import SAE

from evalkit.world.build import build_world
from evalkit.world.zoo import activation_scale, train_one, training_tokens
from evalkit.world.zoo_recipe import (
    L1_LR_FACTOR,
    PER_FEATURE_LR_FACTOR,
    STANDARD_LR_FACTOR,
    ZOO_SIZES,
    ZooEntry,
    size_entries,
    zoo_entries,
)
from evalkit.world.zoo_train import levelled_off, read_curve

# Architectures whose training forward pass equals the inference one (batch top-k differs by design).
SAME_FORWARD = {"standard", "unit_enc_topk", "jumprelu", "gated", "cosine", "aligned_topk", "topafa"}
SAVED_AS = {
    "unit_enc_topk": "topk",
    "unit_enc_batchtopk": "jumprelu",
    "unit_enc_matryoshka_batchtopk": "jumprelu",
    "aligned_topk": "topk",
}
UNIT_ENCODER = {"unit_enc_topk", "unit_enc_batchtopk", "unit_enc_matryoshka_batchtopk"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.getbasetemp() / "world-cache", size="small")


def test_zoo_composition() -> None:
    zoo = ZOO_SIZES["default"]
    entries = size_entries(zoo, 128)
    archs = Counter(e.architecture for e in entries)
    for arch in (
        "standard",
        "unit_enc_topk",
        "unit_enc_batchtopk",
        "unit_enc_matryoshka_batchtopk",
        "jumprelu",
        "gated",
        "cosine",
        "aligned_topk",
        "topafa",
    ):
        assert archs[arch] >= 1, arch
    assert any(e.architecture == "cosine" and e.params.get("per_feature") for e in entries)
    assert any(e.architecture == "cosine" and not e.params.get("per_feature") for e in entries)
    for arch, key in (
        ("standard", "l1_coefficient"),
        ("unit_enc_topk", "k"),
        ("unit_enc_batchtopk", "k"),
        ("cosine", "k"),
        ("aligned_topk", "k"),
    ):
        levels = {
            e.params[key] for e in entries if e.architecture == arch and e.seed == 0 and not e.params.get("per_feature")
        }
        assert len(levels) >= 3, arch
    for arch in ("unit_enc_topk", "aligned_topk", "cosine"):
        seeds = Counter((json.dumps(e.params, sort_keys=True)) for e in entries if e.architecture == arch)
        assert max(seeds.values()) >= 3, arch
    assert len({e.name for e in entries}) == len(entries)
    assert {"topk_k16_seed1", "batchtopk_k2", "matryoshka_k16", "cosine_k16_seed2"} <= {e.name for e in entries}
    # the L1-trained SAEs train at a lower learning rate (co-firing duplicate latents at the zoo's rate)
    assert {e.lr_factor for e in entries if e.architecture == "standard"} == {STANDARD_LR_FACTOR}
    assert {e.lr_factor for e in entries if e.architecture == "gated"} == {L1_LR_FACTOR}
    per_feature = [e for e in entries if e.params.get("per_feature")]
    assert {e.lr_factor for e in per_feature} == {PER_FEATURE_LR_FACTOR}
    others = [e for e in entries if e.architecture not in ("standard", "gated") and not e.params.get("per_feature")]
    assert {e.lr_factor for e in others} == {1.0}
    # per-family sweeps: each family's own k (so that all of them bracket the default matched FVU targets); the
    # cosine SAEs train longer, every member of a seed group equally long
    ks = {
        a: sorted(e.params["k"] for e in entries if e.architecture == a and e.seed == 0)
        for a in ("unit_enc_topk", "unit_enc_batchtopk", "aligned_topk")
    }
    assert ks["unit_enc_topk"] == list(zoo.ks) and ks["unit_enc_batchtopk"] == list(zoo.batchtopk_ks)
    assert ks["aligned_topk"] == list(zoo.aligned_ks)
    assert {e.steps for e in entries if e.architecture == "cosine"} == {zoo.cosine_steps}
    assert {e.steps for e in entries if e.architecture != "cosine"} == {zoo.steps}
    assert "standard_l1_coefficient0_5" in {e.name for e in entries}  # folder names without dots
    assert all(isinstance(e.params.get("k", 1), int) for e in entries)


def test_every_variant_trains_and_loads_with_sae_lens(world, tmp_path) -> None:
    acts = training_tokens(world)
    c = activation_scale(acts)
    assert c > 0
    zoo = replace(ZOO_SIZES["small"], steps=3)
    by_arch = {}
    for entry in size_entries(zoo, world.d_model):
        by_arch.setdefault((entry.architecture, bool(entry.params.get("per_feature"))), entry)
    x = acts[:256]
    for (arch, _), entry in by_arch.items():
        out = tmp_path / entry.name
        record, trained = train_one(entry, acts, c, world, zoo, out)
        loaded = SAE.load_from_disk(str(out))
        cfg = json.loads((out / "cfg.json").read_text())
        assert cfg["architecture"] == SAVED_AS.get(arch, arch)
        assert cfg["metadata"]["hook_name"] == world.hook_name
        assert loaded.cfg.d_sae == zoo.d_sae_multiple * world.d_model
        with torch.no_grad():
            assert torch.isfinite(loaded(x)).all()
            if arch in SAME_FORWARD:
                # float64: no latent sits within rounding error of a threshold or of the k-th score
                recon = loaded.double()(x.double())
                torch.testing.assert_close(recon, c * trained.double()(x.double() / c), rtol=1e-5, atol=1e-5 * c)
                loaded.float()
        if arch in UNIT_ENCODER:  # the zoo rescale to raw units leaves the weights as trained
            W_enc = loaded.W_enc.detach()
            torch.testing.assert_close(W_enc.norm(dim=0), torch.ones(W_enc.shape[1]), rtol=1e-5, atol=1e-5)
        if arch == "aligned_topk":
            assert cfg["metadata"].get("aligned") is True
            W_dec = loaded.W_dec.detach()
            torch.testing.assert_close(W_dec.norm(dim=1), torch.ones(len(W_dec)), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(
                (loaded.W_enc.detach().T * W_dec).sum(1), torch.ones(len(W_dec)), rtol=1e-4, atol=1e-4
            )
        if arch == "cosine":
            trajectory = json.loads((out / "cosine_a_trajectory.json").read_text())
            assert trajectory[0]["step"] == 0 and trajectory[-1]["step"] == record["steps"]
            assert record["a_final"] == trajectory[-1]["a_mean"]


def test_zoo_entry_is_plain_data() -> None:
    entry = ZooEntry("x", "topk", {"k": 4}, seed=2, steps=5)
    assert entry.params == {"k": 4} and entry.seed == 2


@pytest.mark.slow
def test_default_world_and_zoo() -> None:
    """The full-size world and zoo (minutes; cached under EVALKIT_CACHE or ~/.cache/evalkit)."""
    from evalkit.world.zoo import build_zoo

    world = build_world(size="default")
    history = world.info["history"]
    losses = [p["heldout_loss"] for p in history]
    assert losses[-1] < 0.6 * world.info["unigram_entropy"]
    # The last history point is the loss once the tail is planted (build.py marks it tail_planted): not training.
    training = [p for p in history if not p.get("tail_planted")]
    after_400 = [p["heldout_loss"] for p in training if p["step"] >= 400]
    assert after_400[-1] < after_400[0]  # still falling well past the first few hundred steps
    norms = world.info["norms"]
    assert norms["planted_over_median"]["<bos>"] >= 100
    assert 0.1 <= norms["variance_share_above_10x"] <= 0.6
    assert 10 <= norms["max_over_median"] <= 60
    assert 1.3 <= norms["mean_over_median"] <= 3
    assert norms["pca_variance_share"]["6"] < 0.4  # the tail is not confined to a few directions
    zoo = build_zoo(world)
    records = json.loads((zoo / "zoo.json").read_text())["saes"]
    assert len(records) >= 28
    for record in records:
        sae = SAE.load_from_disk(str(zoo / record["name"]))
        assert sae.cfg.d_in == world.d_model and sae.cfg.d_sae == ZOO_SIZES["default"].d_sae_multiple * world.d_model
        assert record["converged"], record["name"]  # every SAE trained until its loss levelled off
        curve = read_curve(zoo / record["name"])
        probes = [row["probe_loss"] for row in curve if not math.isnan(row["probe_loss"])]
        assert len(curve) == record["steps"] and levelled_off(probes, steps=record["steps"])


def test_small_zoo_builds_are_bit_identical(world, tmp_path) -> None:
    from evalkit.world.cache import MANIFEST
    from evalkit.world.zoo import build_zoo

    def content(root):
        files = json.loads((root / MANIFEST).read_text())["files"]
        return {rel: info["sha256"] for rel, info in files.items() if rel != "zoo.json"}  # has timings

    first = build_zoo(world, cache_dir=tmp_path / "a")
    second = build_zoo(world, cache_dir=tmp_path / "b")
    assert first != second and content(first) == content(second)
    assert sum(rel.endswith("sae_weights.safetensors") for rel in content(first)) == 28


def test_ordinary_mask_hand_case() -> None:
    from evalkit.world.zoo import ordinary_mask

    acts_ND = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [36.0, 48.0], [0.0, 21.0]])  # norms 1 2 5 60 21
    assert ordinary_mask(acts_ND, 10.0).tolist() == [True, True, True, False, True]  # median 5: cap at 50
    assert ordinary_mask(acts_ND, 4.0).tolist() == [True, True, True, False, False]
    assert ordinary_mask(acts_ND, None).all()


def test_norm_cap_trains_on_ordinary_tokens_and_changes_the_cache_key(world, tmp_path, monkeypatch) -> None:
    from evalkit.world import zoo
    from evalkit.world.zoo import build_zoo

    one_step = replace(ZOO_SIZES["small"], steps=1)
    monkeypatch.setitem(zoo.ZOO_SIZES, "one", one_step)
    monkeypatch.setitem(zoo.ZOO_SIZES, "one_capped", replace(one_step, train_norm_cap=3.0))
    plain = build_zoo(world, cache_dir=tmp_path, size="one")
    capped = build_zoo(world, cache_dir=tmp_path, size="one_capped")
    assert plain != capped  # a different recipe is a different cache entry, never a stale one
    acts = training_tokens(world)
    norms = acts.norm(dim=-1)
    n_ordinary = int((norms <= 3.0 * norms.median()).sum())
    assert 0 < n_ordinary < len(acts)  # the small world's heavy tail reaches past 3x the median
    plain_info = json.loads((plain / "zoo.json").read_text())
    capped_info = json.loads((capped / "zoo.json").read_text())
    assert plain_info["n_train_tokens"] == len(acts) and capped_info["n_train_tokens"] == n_ordinary
    assert capped_info["activation_scale"] == plain_info["activation_scale"] == activation_scale(acts)


def test_an_edited_recipe_is_a_new_cache_entry(world, tmp_path, monkeypatch) -> None:
    """Changing one entry's parameters (not the zoo size) must not reuse the zoo trained with the old recipe."""
    from evalkit.world import zoo
    from evalkit.world.zoo import build_zoo

    monkeypatch.setitem(zoo.ZOO_SIZES, "one", replace(ZOO_SIZES["small"], steps=1))
    before = build_zoo(world, cache_dir=tmp_path, size="one")
    original = zoo.size_entries

    def edited(*args, **kwargs):
        return [
            replace(e, params={**e.params, "l1_coefficient": 7.0}) if e.architecture == "standard" else e
            for e in original(*args, **kwargs)
        ]

    monkeypatch.setattr(zoo, "size_entries", edited)
    after = build_zoo(world, cache_dir=tmp_path, size="one")
    assert after != before
    assert json.loads((after / "zoo.json").read_text())["saes"][0]["params"]["l1_coefficient"] == 7.0


def test_zoo_records_how_each_sae_was_initialised() -> None:
    entries = {e.name: e for e in zoo_entries(d_sae=1024)}
    family = {"unit_enc_topk", "unit_enc_batchtopk", "unit_enc_matryoshka_batchtopk", "aligned_topk"}
    assert {e.architecture for e in entries.values() if e.outlier_init} == family
    assert not entries["standard_l1_coefficient2"].outlier_init and not entries["cosine_k16"].outlier_init
