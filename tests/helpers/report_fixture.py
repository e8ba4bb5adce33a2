"""A constructed output folder (docs/cli.md layout) for the report tests; tests/test_reports_fixture.py checks it.

Families (metrics exactly linear in fvu, so interpolated values are known by hand):
- standard (3 SAEs, one seed each): fvu 0.1, 0.2, 0.4; ce_loss_score = 1 − fvu; alignment_mean = 2·fvu + 0.5;
  l0 = 64, 32, 8.
- topk (2 sweep levels × 2 seeds): per SAE ce_loss_score = 1 − 0.5·fvu, alignment_mean = fvu;
  level k8: fvu 0.15 / 0.25 (mean 0.2), l0 8 / 8; level k4: fvu 0.45 / 0.55 (mean 0.5), l0 4 / 4.
- cosine (2 SAEs): fvu 0.3, 0.6; ce_loss_score = 0.9 − fvu; alignment_mean = 1; l0 = 16, 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from evalkit.core.io import file_stem
from evalkit.engine.outputs import RESULTS_COLUMNS

XSS = "<script>alert(1)</script>"

# sae_id -> (architecture, family, seed, fvu, l0, ce_loss_score, alignment_mean)
SAES: dict[str, tuple[str, str, int, float, float, float, float]] = {
    "std_l1a": ("standard", "standard", 0, 0.1, 64.0, 0.9, 0.7),
    "std_l1b": ("standard", "standard", 0, 0.2, 32.0, 0.8, 0.9),
    "std_l1c": ("standard", "standard", 0, 0.4, 8.0, 0.6, 1.3),
    "topk_k8_seed0": ("topk", "topk", 0, 0.15, 8.0, 0.925, 0.15),
    "topk_k8_seed1": ("topk", "topk", 1, 0.25, 8.0, 0.875, 0.25),
    "topk_k4_seed0": ("topk", "topk", 0, 0.45, 4.0, 0.775, 0.45),
    "topk_k4_seed1": ("topk", "topk", 1, 0.55, 4.0, 0.725, 0.55),
    "cos_a": ("cosine", "cosine", 0, 0.3, 16.0, 0.6, 1.0),
    "cos_b": ("cosine", "cosine", 0, 0.6, 4.0, 0.3, 1.0),
}
D_SAE = 8


def results_rows(saes: dict[str, tuple[str, str, int, float, float, float, float]], path_prefix: str) -> list[dict]:
    rows = []
    for sae_id, (arch, family, seed, fvu, l0, ce, align) in saes.items():
        base = {
            "sae_id": sae_id,
            "sae_path": f"{path_prefix}/{sae_id}",
            "architecture": arch,
            "family": family,
            "hook": "blocks.1.hook_resid_post",
            "d_in": 4,
            "d_sae": D_SAE,
            "seed": seed,
            "n_tokens": 1000,
            "config_hash": "c0",
            "evalkit_version": "0.1.0",
        }
        sae_level = {
            "fvu": fvu,
            "l0": l0,
            "ce_loss_score": ce,
            "alignment_mean": align,
            "mse": 10 * fvu,
            "fvu_norm_q1": fvu,
            "fvu_norm_q4": 3 * fvu,
            "norm_detectors": 2.0,
            "afa_eps_lbo_median": 1e-5,
            "afa_eps_lbo_p90": 3e-5,
            "seed_stability_matched_cos": 0.8,
        }
        rows += [base | {"metric": m, "value": v, "latent": None} for m, v in sae_level.items()]
        rows += [
            base | {"metric": "feature_density", "value": 0.0 if i == 0 else 0.01 * i, "latent": i}
            for i in range(D_SAE)
        ]
    return rows


def write_run_dir(
    out: Path,
    saes: dict | None = None,
    path_prefix: str = "/zoo",
    extras: bool = True,
    afa_samples: bool = False,
) -> Path:
    """Write results.csv (+ features, autointerp, run.json, examples when extras) into out."""
    saes = SAES if saes is None else saes
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(results_rows(saes, path_prefix), columns=list(RESULTS_COLUMNS)).to_csv(
        out / "results.csv", index=False
    )
    if not extras:
        return out
    features = [
        {
            "sae_id": s,
            "latent": i,
            "feature_density": 0.0 if i == 0 else 0.01 * i,
            "alignment_score": 0.5 + 0.1 * i,
            "norm_q4_share": 0.25,
            "concept_best": "digits" if i else XSS,
            "concept_best_f1": 0.6,
            # cosine SAEs learn a per-feature norm exponent; inner-product SAEs report 1
            "norm_dependence_a_latent": 0.3 + 0.1 * i if saes[s][0] == "cosine" else 1.0,
            "seed_match_cos": 0.5 + 0.05 * i if saes[s][0] == "topk" else None,
        }
        for s in saes
        for i in range(D_SAE)
    ]
    pd.DataFrame(features).to_csv(out / "features.csv", index=False)
    autointerp = [
        {
            "sae_id": s,
            "latent": i,
            "scorer": scorer,
            "explanation": f"the tokens {XSS}",
            "score": score,
            "parse_failures": 0,
            "prompt_hash": "h",
            "model": model,
        }
        for s in saes
        for i in (1, 2)
        for scorer, model, score in (("detection", "baseline", 0.6), ("fuzzing", "baseline", 0.7))
    ]
    pd.DataFrame(autointerp).to_csv(out / "autointerp.csv", index=False)
    (out / "run.json").write_text(json.dumps({"evalkit_version": "0.1.0", "n_tokens": 1000, "skipped": {}}))
    (out / "examples").mkdir(exist_ok=True)
    for s in saes:
        windows = [
            {
                "latent": i,
                "kind": "top",
                "tokens": ["The", " cat", XSS, " sat"],
                "activations": [0.0, 0.5, 2.0, 0.1],
            }
            for i in (1, 2, 3)
        ]
        text = "\n".join(json.dumps(w) for w in windows)
        (out / "examples" / f"{file_stem(s)}.jsonl").write_text(text + "\n")
    if afa_samples:
        (out / "afa").mkdir(exist_ok=True)
        for s in saes:
            z = [1.0 + 0.1 * i for i in range(50)]
            pd.DataFrame({"z_norm": z, "ftilde_norm": [0.98 * v for v in z], "eps_lbo": [1e-5] * 50}).to_csv(
                out / "afa" / f"{file_stem(s)}.csv", index=False
            )
    return out


# Every plot the report draws from a full run folder (the HTML and browser tests both check this list).
PLOT_IDS = (
    "pareto-fvu",
    "pareto-ce",
    "density-hist",
    "alpha-hist",
    "norm-fvu",
    "norm-detectors",
    "afa-eps",
    "afa-scatter",
    "afa-eps-hist",
    "stability-bars",
    "autointerp-scores",
    "norm-exponent-hist",
    "seed-match-hist",
)
