"""Orchestration: choose latents, explain them, score them (plus the shuffled control), aggregate.

`run_autointerp(examples, decode, config, cache_dir, llm)` is the one entry point; it returns the rows of
autointerp.csv and the MetricValues of results.csv for one SAE. Nothing here raises for an LLM failure: a
latent whose request failed gets a row with that status and reason; a cap or an unreachable endpoint stops new
requests and is reported in `stop_reason`, with every finished result kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from autointerp.client import LLMClient, Usage
from autointerp.config import AutointerpConfig
from autointerp.explainers import EXPLAINERS, Decode, Explanation
from autointerp.judges import JUDGES, Judge
from autointerp.sampling import LatentExamples
from autointerp.scorers import SCORERS, Score
from autointerp.status import Status
from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import MetricValue

log = logging.getLogger(__name__)

CONTROL = "detection_shuffled"
"""Scorer name of the shuffled-explanation control rows (detection with another latent's explanation)."""
CONTROL_METRIC = "autointerp_detection_balanced_accuracy_shuffled"
AUTOINTERP_COLUMNS = (
    "latent",
    "scorer",
    "explanation",
    "score",
    "accuracy",
    "positive_fraction",
    "status",
    "reason",
    "parse_failures",
    "prompt_hash",
    "model",
    "explainer_model",
    "firings",
    "n_items",
)
"""Columns of autointerp.csv after the runner's SAE columns (sae_id, ...)."""

MODES: dict[str, dict[str, str]] = {
    "baseline": {"explainer": "baseline", "judge": "baseline"},
    "llm": {"explainer": "llm", "judge": "llm"},
}


def config_for_mode(mode: str, **overrides: object) -> AutointerpConfig | None:
    """`--autointerp baseline|llm|off` (+ e.g. base_url, explainer_model, scorer_model, max_cost_usd,
    seed)."""
    if mode == "off":
        return None
    if mode not in MODES:
        raise EvalkitInputError("--autointerp", f"unknown mode {mode!r}; choose baseline, llm or off")
    values = {k: v for k, v in overrides.items() if v is not None}
    return AutointerpConfig(**{**MODES[mode], **values})  # type: ignore[arg-type]


@dataclass(frozen=True)
class AutointerpRow:
    latent: int
    scorer: str
    explanation: str | None
    score: float | None
    accuracy: float | None
    positive_fraction: float | None
    status: Status
    reason: str
    parse_failures: int
    prompt_hash: str
    model: str
    explainer_model: str
    firings: int
    n_items: int

    def as_dict(self) -> dict[str, str | int | float | None]:
        return asdict(self)


@dataclass
class AutointerpResult:
    rows: list[AutointerpRow]
    metrics: list[MetricValue]
    explanations: dict[int, Explanation]
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None
    """Why requests stopped early (a cap, an unreachable endpoint, a refused key); None when complete."""
    stop_status: Status | None = None
    """budget_exhausted, unreachable or auth_error when stop_reason is set."""
    base_url: str = ""
    sent: Usage = field(default_factory=Usage)
    """What this process actually sent; `usage` is what the results took (earlier runs' cached replies included)."""

    def input_error(self) -> EvalkitInputError | None:
        """For the CLI, after writing the results: an unreachable endpoint or a refused key is bad input
        (exit 2); a cap that stopped the run is not an error."""
        if self.stop_status is not None and self.stop_status.stops_run:
            return EvalkitInputError(f"--llm-base-url {self.base_url}", str(self.stop_reason))
        return None


def choose_latents(examples: dict[int, LatentExamples], config: AutointerpConfig) -> list[int]:
    """The given list, else a seeded sample of the latents with enough examples."""
    if config.latents is not None:
        return list(config.latents)
    eligible = sorted(k for k, e in examples.items() if e.status is Status.OK)
    rng = np.random.default_rng(config.seed)
    if len(eligible) <= config.n_latents:
        return eligible
    return sorted(rng.choice(eligible, size=config.n_latents, replace=False).tolist())


ACT_DIGITS = 4
"""Significant digits of the activations written to example files (display only; keeps the files small)."""


def _display_act(a: float) -> float | int:
    # Most window tokens are inactive: write them as 0, not 0.0; the rest rounded for display.
    return 0 if a == 0 else float(f"{a:.{ACT_DIGITS}g}")


def example_records(
    examples: dict[int, LatentExamples], decode: Decode, latents: Collection[int] | None = None
) -> list[dict[str, int | str | list[str] | list[float | int]]]:
    """One record per window of `latents` (default: all), the shape reports/ reads from
    DIR/examples/<sae>.jsonl; activations rounded to ACT_DIGITS significant digits."""
    return [
        {
            "latent": k,
            "kind": w.kind,
            "tokens": decode(list(w.tokens)),
            "activations": [_display_act(float(a)) for a in w.acts],
        }
        for k, ex in sorted(examples.items())
        if latents is None or k in latents
        for w in (*ex.explain, *ex.held_out, *ex.random)
    ]


def derangement(items: list[int], seed: int) -> dict[int, int]:
    """Each item mapped to a different item (a seeded random cyclic shift of a shuffled order)."""
    if len(items) < 2:
        return {}
    order = np.random.default_rng([seed, 7]).permutation(items).tolist()
    return {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}


def run_autointerp(
    examples: dict[int, LatentExamples],
    decode: Decode,
    config: AutointerpConfig,
    cache_dir: Path | None,
    llm: LLMClient | None = None,
) -> AutointerpResult:
    """Explain and score one SAE's latents. Builds an LLMClient from `config` when an LLM part needs one."""
    needs_llm = "llm" in (config.explainer, config.judge)
    if needs_llm and llm is None:
        llm = LLMClient(config, cache_dir)
    for name in config.scorers:
        SCORERS.get(name, "autointerp scorers")
    return asyncio.run(_run(examples, decode, config, llm))


async def _run(
    examples: dict[int, LatentExamples], decode: Decode, config: AutointerpConfig, llm: LLMClient | None
) -> AutointerpResult:
    explainer = EXPLAINERS.get(config.explainer, "autointerp explainer")(config, llm)
    judge = JUDGES.get(config.judge, "autointerp judge")(config, llm)
    chosen = choose_latents(examples, config)
    ready = [k for k in chosen if k in examples and examples[k].status is Status.OK]
    try:
        explained = await asyncio.gather(*(explainer.explain(examples[k], decode) for k in ready))
        explanations = {e.latent: e for e in explained}
        rows = await _score_all(examples, explanations, judge, decode, config)
    finally:
        if llm is not None:
            await llm.aclose()
    rows += _unscored_rows(chosen, examples, explanations, config)
    rows.sort(key=lambda r: (r.latent, r.scorer))
    usage = llm.totals() if llm is not None else Usage()
    sent = dataclasses.replace(llm.sent) if llm is not None else Usage()
    stop_reason = llm.final_stop_reason() if llm is not None else None
    stop_status = llm.stop_status if stop_reason else None
    if stop_reason:
        log.error("autointerp stopped early: %s; finished results are kept", stop_reason)
    n_insufficient = sum(e.status is Status.INSUFFICIENT_EXAMPLES for e in examples.values())
    metrics = aggregate(rows, explanations, usage, n_insufficient)
    return AutointerpResult(rows, metrics, explanations, usage, stop_reason, stop_status, config.base_url, sent)


async def _score_all(
    examples: dict[int, LatentExamples],
    explanations: dict[int, Explanation],
    judge: Judge,
    decode: Decode,
    config: AutointerpConfig,
) -> list[AutointerpRow]:
    ok = sorted(k for k, e in explanations.items() if e.text is not None)
    jobs: list[tuple[int, str, str]] = [(k, name, str(explanations[k].text)) for k in ok for name in config.scorers]
    if config.shuffled_control:
        partner = derangement(ok, config.seed)
        jobs += [(k, CONTROL, str(explanations[partner[k]].text)) for k in ok if k in partner]

    async def one(latent: int, name: str, text: str) -> AutointerpRow:
        scorer = SCORERS.get("detection" if name == CONTROL else name)
        result = await scorer.score(examples[latent], text, judge, decode, config.seed)
        return _row(examples[latent], replace(result, scorer=name), text, judge.model, explanations[latent].model)

    return list(await asyncio.gather(*(one(*job) for job in jobs)))


def _row(ex: LatentExamples, s: Score, explanation: str | None, model: str, explainer_model: str) -> AutointerpRow:
    return AutointerpRow(
        ex.latent,
        s.scorer,
        explanation,
        s.score,
        s.accuracy,
        s.positive_fraction,
        s.status,
        s.reason,
        s.parse_failures,
        s.prompt_hash,
        model,
        explainer_model,
        ex.firings,
        s.n_items,
    )


def _unscored_rows(
    chosen: list[int],
    examples: dict[int, LatentExamples],
    explanations: dict[int, Explanation],
    config: AutointerpConfig,
) -> list[AutointerpRow]:
    """Rows for latents that never reached a scorer: too few examples, not tracked, or no explanation."""
    rows = []
    for k in chosen:
        ex = examples.get(k) or LatentExamples(
            k,
            0,
            0.0,
            0.0,
            status=Status.INSUFFICIENT_EXAMPLES,
            reason="latent was not tracked by the example collector",
        )
        exp = explanations.get(k)
        if exp is not None and exp.text is not None:
            continue
        status = ex.status if ex.status is not Status.OK else exp.status if exp else Status.NOT_RUN
        status = Status.INSUFFICIENT_EXAMPLES if status is Status.DEAD else status
        reason = ex.reason if ex.status is not Status.OK else (f"explainer: {exp.reason}" if exp else "")
        for name in config.scorers:
            rows.append(_row(ex, Score(name, status, reason=reason), None, "", exp.model if exp else ""))
    return rows


def _mean_std(values: list[float], name: str) -> list[MetricValue]:
    if not values:
        return []
    return [MetricValue(name, float(np.mean(values))), MetricValue(f"{name}_std", float(np.std(values)))]


def aggregate(
    rows: list[AutointerpRow], explanations: dict[int, Explanation], usage: Usage, n_insufficient: int
) -> list[MetricValue]:
    """SAE-level means ± std per scorer, per-latent scores, counts and LLM usage, as results.csv records."""

    def scores(scorer: str, attr: str = "score") -> list[tuple[int, float]]:
        return [(r.latent, float(getattr(r, attr))) for r in rows if r.scorer == scorer and r.status is Status.OK]

    out: list[MetricValue] = []
    for name, scorer in SCORERS.items():
        for k, (attr, metric) in enumerate(scorer.produces):
            out += _mean_std([v for _, v in scores(name, attr)], metric)
            if k == 0:  # the headline score, per latent too
                out += [MetricValue(metric, v, latent) for latent, v in scores(name, attr)]
    out += _mean_std([v for _, v in scores(CONTROL)], CONTROL_METRIC)
    scored = {r.latent for r in rows if r.status is Status.OK and r.scorer != CONTROL}
    parse_failures = sum(r.parse_failures for r in rows) + sum(e.parse_failures for e in explanations.values())
    judged = sum(1 for r in rows if r.status.judged and r.explanation is not None)
    judged += sum(1 for e in explanations.values() if e.status.judged)
    out += [
        MetricValue("autointerp_scored_latents", float(len(scored))),
        MetricValue("autointerp_parse_failures", float(parse_failures)),
        MetricValue("autointerp_parse_failure_share", parse_failures / judged if judged else 0.0),
        MetricValue("autointerp_insufficient_latents", float(n_insufficient)),
        MetricValue("autointerp_llm_errors", float(len({r.latent for r in rows if r.status is Status.LLM_ERROR}))),
        MetricValue("autointerp_llm_requests", float(usage.requests)),
        MetricValue("autointerp_llm_prompt_tokens", float(usage.prompt_tokens)),
        MetricValue("autointerp_llm_completion_tokens", float(usage.completion_tokens)),
        MetricValue("autointerp_llm_cost_usd", usage.cost_usd),
    ]
    return out
