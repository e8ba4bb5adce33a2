"""examples/<sae>.jsonl holds only the latents autointerp scored (plus the report cards' top-up), and the
report's feature cards pick their latents among them, so every card still shows windows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers.planted_autointerp import N_PLANTED, RARE_LATENT, decode, planted_examples

from autointerp.pipeline import config_for_mode, example_records, run_autointerp
from evalkit.app.run_autointerp import recorded_latents
from reports.cards import CARDS_PER_SAE, _sample_latents, _windows


def scored(n_latents: int) -> tuple[dict, object]:
    config = config_for_mode("baseline", n_latents=n_latents, seed=4)
    assert config is not None
    examples = planted_examples(config)
    return examples, run_autointerp(examples, decode, config, cache_dir=None)


@pytest.mark.parametrize("n_latents", [1, 5])
def test_records_cover_scored_latents_and_card_latents(n_latents: int) -> None:
    examples, result = scored(n_latents)
    chosen = {r.latent for r in result.rows}
    assert len(chosen) == n_latents
    latents = recorded_latents(examples, result, seed=4)
    # Scored latents always; topped up to CARDS_PER_SAE with other (non-dead, non-rare) planted latents.
    assert chosen <= latents and len(latents) == max(n_latents, CARDS_PER_SAE)
    assert latents <= set(range(N_PLANTED)) and RARE_LATENT not in latents
    assert recorded_latents(examples, result, seed=4) == latents  # deterministic

    records = example_records(examples, decode, latents)
    assert {r["latent"] for r in records} == latents
    assert len(records) == len(latents) * (10 + 5 + 2 + 2 + 10)  # every window of each recorded latent
    frame = pd.DataFrame(json.loads(json.dumps(r)) for r in records)  # what the report reads back
    autointerp = pd.DataFrame({"sae_id": "s", "latent": sorted(chosen)})
    cards = _sample_latents(frame, autointerp, "s", seed=0)
    assert len(cards) == CARDS_PER_SAE and set(cards) <= latents
    if n_latents >= CARDS_PER_SAE:  # explained latents come first
        assert set(cards) <= chosen
    else:
        assert chosen <= set(cards)
    for latent in cards:
        windows = _windows(frame, latent)
        assert windows and max(t.activation for w in windows for t in w) > 1.0  # planted activations are 1..2


def test_activations_are_rounded_for_display() -> None:
    examples, result = scored(1)
    latent = next(iter({r.latent for r in result.rows}))
    records = example_records(examples, decode, {latent})
    window = examples[latent].explain[0]
    written = next(r for r in records if r["kind"] == window.kind)["activations"]
    assert written == [0 if a == 0 else pytest.approx(a, rel=1e-3) for a in window.acts]
    assert all(type(a) is int for a, raw in zip(written, window.acts, strict=True) if raw == 0)
    assert all(len(repr(a).replace(".", "").lstrip("0")) <= 5 for a in written)
