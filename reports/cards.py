"""Feature cards: for a seeded sample of latents, their top-activating windows and stored per-latent facts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from autointerp.pipeline import CONTROL
from reports.load import RunTables, read_examples
from reports.views import CardView, Section, TokenView, fmt

CARDS_PER_SAE = 3
MAX_CARDS = 24
WINDOWS_PER_CARD = 4
CARD_FACTS = (
    ("density", "feature_density"),
    ("α", "alignment_score"),
    ("norm Q4 share", "norm_q4_share"),
    ("norm AUROC", "norm_auroc"),
    ("concept", "concept_best"),
    ("concept F1", "concept_best_f1"),
    ("seed match cos", "seed_match_cos"),
)


def _facts(features: pd.DataFrame | None, sae_id: str, latent: int) -> list[tuple[str, str]]:
    if features is None:
        return []
    row = features[(features["sae_id"] == sae_id) & (features["latent"] == latent)]
    if row.empty:
        return []
    first = row.iloc[0]
    return [(label, fmt(first[col])) for label, col in CARD_FACTS if col in row.columns and pd.notna(first[col])]


def _explanations(autointerp: pd.DataFrame | None, sae_id: str, latent: int) -> list[tuple[str, str]]:
    if autointerp is None or "explanation" not in autointerp.columns:
        return []
    rows = autointerp[(autointerp["sae_id"] == sae_id) & (autointerp["latent"] == latent)]
    # Control rows score this latent with *another* latent's explanation: never shown as this latent's own.
    rows = rows[rows["scorer"].astype(str) != CONTROL]
    model = rows["model"].fillna("").astype(str) if "model" in rows.columns else pd.Series("", index=rows.index)
    out = []
    for (m, explanation), g in rows.assign(model=model).groupby(["model", "explanation"], sort=True):
        scores = ", ".join(f"{s}={fmt(float(v)) or 'n/a'}" for s, v in zip(g["scorer"], g["score"], strict=True))
        out.append((str(m) or "explainer", f"{explanation} — {scores}"))
    return out


def surface_text(tokens: list[str]) -> list[str]:
    """Each token as it reads in the text. Sub-word tokenizers' tokens carry their own spaces (" word"); a
    word-level tokenizer's do not, and its words are separated by one space (the rule autointerp's prompts use)."""
    if any(t[:1].isspace() for t in tokens):
        return tokens
    return [t if i == 0 else " " + t for i, t in enumerate(tokens)]


def _windows(examples: pd.DataFrame, latent: int) -> list[list[TokenView]]:
    top = examples[(examples["latent"] == latent) & (examples["kind"] == "top")].head(WINDOWS_PER_CARD)
    peak = max((max(a, default=0.0) for a in top["activations"]), default=0.0)
    scale = peak if peak > 0 and math.isfinite(peak) else 1.0
    return [
        [
            TokenView(t, float(min(max(a / scale, 0.0), 1.0)), float(a))
            for t, a in zip(surface_text(list(toks)), acts, strict=False)
        ]
        for toks, acts in zip(top["tokens"], top["activations"], strict=True)
    ]


def _sample_latents(examples: pd.DataFrame, autointerp: pd.DataFrame | None, sae_id: str, seed: int) -> list[int]:
    """Latents with top windows, explained ones first, a seeded sample of CARDS_PER_SAE."""
    with_windows = sorted(set(examples.loc[examples["kind"] == "top", "latent"].astype(int)))
    explained: set[int] = set()
    if autointerp is not None:
        explained = set(autointerp.loc[autointerp["sae_id"] == sae_id, "latent"].astype(int))
    rng = np.random.default_rng(seed)
    preferred = [latent for latent in with_windows if latent in explained]
    rest = [latent for latent in with_windows if latent not in explained]
    chosen = list(rng.permutation(preferred))[:CARDS_PER_SAE]
    chosen += list(rng.permutation(rest))[: CARDS_PER_SAE - len(chosen)]
    return sorted(int(latent) for latent in chosen)


def cards_section(tables: RunTables, seed: int = 0) -> Section:
    section = Section(
        "cards",
        "Feature cards",
        "A seeded sample of latents: top-activating windows as written (token shade ∝ activation; hover a token "
        "for its value), stored per-latent metrics, and the latent's own explanation with its scores.",
    )
    missing = []
    for sae_id in sorted(tables.saes.index):
        if len(section.cards) >= MAX_CARDS:
            break
        examples = read_examples(tables.source_dir(sae_id), sae_id)
        if examples is None or examples.empty:
            missing.append(sae_id)
            continue
        for latent in _sample_latents(examples, tables.autointerp, sae_id, seed)[: MAX_CARDS - len(section.cards)]:
            section.cards.append(
                CardView(
                    sae_id=sae_id,
                    latent=latent,
                    facts=_facts(tables.features, sae_id, latent),
                    explanations=_explanations(tables.autointerp, sae_id, latent),
                    windows=_windows(examples, latent),
                )
            )
    if missing:
        section.notes.append(
            f"No example windows (DIR/examples/<sae_id>.jsonl) for {len(missing)} SAE(s): "
            f"{', '.join(missing[:10])}" + (" …" if len(missing) > 10 else "")
        )
    return section
