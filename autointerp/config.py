"""Every knob of the autointerp stage in one dataclass; defaults follow docs/autointerp.md (SAEBench's counts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from evalkit.core.errors import EvalkitInputError
from evalkit.core.identity import stable_hash

# USD per million (input, output) tokens; an estimate for the cost cap, not a bill. Override via
# AutointerpConfig.prices.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


@dataclass(frozen=True)
class AutointerpConfig:
    """Sampling, explainer, scorer and LLM-client settings of one autointerp run.

    Nothing here holds the API key: the client reads it from the environment when it is built, so a config can
    be logged, hashed and written to run.json safely.
    """

    n_latents: int = 100
    """How many latents to score, sampled (seeded) from the latents with at least `min_firings` firings."""
    latents: tuple[int, ...] | None = None
    """Score exactly these latents instead of a sample; each gets rows even when it has too few firings."""
    seed: int = 0
    """Seed for latent sampling, example sampling, shuffling of scorer windows and the shuffled control."""
    min_firings: int = 15
    """Latents with fewer active tokens are reported as `insufficient_examples`, never scored 0."""
    window: int = 10
    """Half-width of an example window: ±window tokens around the activating token, clipped at sequence
    edges."""
    active_frac: float = 0.01
    """A token is active when its activation is > active_frac × the latent's max (SAEBench convention)."""
    n_top_explain: int = 10
    """Top-activation windows shown to the explainer."""
    n_top_score: int = 2
    """Top-activation windows held out for scoring (drawn at random from the top n_top_explain +
    n_top_score)."""
    n_iw_explain: int = 5
    """Importance-weighted (∝ activation²) windows shown to the explainer."""
    n_iw_score: int = 2
    """Importance-weighted windows held out for scoring."""
    n_random_score: int = 10
    """Uniformly random windows (whatever their activation) added to the detection scorer."""
    explain_sampler: str = "top_iw"
    """Explainer examples: 'top_iw' (top + importance-weighted, SAEBench) or 'quantile' (even over
    quantiles)."""
    n_quantiles: int = 5
    """Activation quantile bins for the 'quantile' sampler."""
    peaks_per_sequence: int = 3
    """At most this many non-overlapping candidate windows per latent per sequence and pool."""
    random_pool: int = 64
    """Random windows kept (shared by all latents, with every tracked latent's activations on them)."""
    explainer: str = "baseline"
    """Explainer name in autointerp.explainers.EXPLAINERS: 'baseline' (frequent tokens) or 'llm'."""
    judge: str = "baseline"
    """Judge name in autointerp.scorers.JUDGES answering scorer questions: 'baseline' (token match) or
    'llm'."""
    scorers: tuple[str, ...] = ("detection", "fuzzing")
    """Scorer names in autointerp.scorers.SCORERS; 'simulation' is optional."""
    shuffled_control: bool = True
    """Also score detection with another latent's explanation (a chance-level control)."""
    baseline_n_tokens: int = 3
    """How many of the most frequent active tokens the baseline explanation names."""
    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible endpoint (`--llm-base-url`)."""
    explainer_model: str = "gpt-4o-mini"
    """Model writing explanations (`--llm-model` sets both models)."""
    scorer_model: str = "gpt-4o-mini"
    """Model answering scorer prompts."""
    temperature: float = 0.0
    """Sampling temperature sent with every request."""
    max_tokens_explain: int = 80
    """Completion token limit of an explanation request."""
    max_tokens_score: int = 80
    """Completion token limit of a detection/fuzzing request."""
    max_tokens_simulation: int = 800
    """Completion token limit of a simulation request."""
    concurrency: int = 8
    """Requests in flight at once (asyncio.Semaphore)."""
    timeout_s: float = 60.0
    """Per-request timeout; a timeout is retried."""
    max_retries: int = 4
    """Retries after the first attempt, on 429, 5xx, timeouts, connection errors and malformed replies."""
    backoff_base_s: float = 0.5
    """First backoff delay; doubles per retry, jittered ×[0.5, 1.5)."""
    backoff_max_s: float = 30.0
    """Cap on one backoff delay, Retry-After included."""
    max_cost_usd: float | None = None
    """Stop sending requests once the estimated spend reaches this (`--max-llm-cost`); finished results are
    kept."""
    max_requests: int | None = None
    """Stop once this many HTTP requests (retries included) were sent."""
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    """USD per million (input, output) tokens by model name."""
    default_price: tuple[float, float] = (1.0, 4.0)
    """Price assumed for a model missing from `prices` (deliberately high so a cost cap errs on the safe
    side)."""

    def __post_init__(self) -> None:
        checks = [
            (self.window >= 1, "window must be >= 1"),
            (self.min_firings >= 1, "min_firings must be >= 1"),
            (0.0 <= self.active_frac < 1.0, "active_frac must be in [0, 1)"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.explain_sampler in ("top_iw", "quantile"), "explain_sampler must be top_iw or quantile"),
            (self.n_top_score + self.n_iw_score >= 1, "at least one held-out scoring window is needed"),
            (self.max_cost_usd is None or self.max_cost_usd >= 0, "max_cost_usd must be >= 0"),
        ]
        for ok, problem in checks:
            if not ok:
                raise EvalkitInputError("autointerp config", problem)

    @property
    def window_len(self) -> int:
        return 2 * self.window + 1

    @property
    def n_top_total(self) -> int:
        return self.n_top_explain + self.n_top_score

    @property
    def n_iw_total(self) -> int:
        return self.n_iw_explain + self.n_iw_score

    def price(self, model: str) -> tuple[float, float]:
        return self.prices.get(model, self.default_price)

    def fingerprint(self) -> str:
        """A short hash of every setting, for the results store's cache key."""
        return stable_hash(asdict(self), 16, compact=False)
