"""The status of one autointerp outcome (an explanation, a judge's verdict, a score, a latent's examples)."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A str, so CSV/JSON writers and comparisons with plain strings see the value ("ok", "parse_failure", ...)."""

    OK = "ok"
    PARSE_FAILURE = "parse_failure"
    """The reply did not follow the requested format: no score (a silently wrong score is worse than none)."""
    LLM_ERROR = "llm_error"
    BUDGET_EXHAUSTED = "budget_exhausted"
    UNREACHABLE = "unreachable"
    AUTH_ERROR = "auth_error"
    INSUFFICIENT_EXAMPLES = "insufficient_examples"
    DEAD = "dead"
    NOT_RUN = "not_run"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def judged(self) -> bool:
        """A judge or explainer answered (well or not): counts toward the parse-failure share."""
        return self in (Status.OK, Status.PARSE_FAILURE)

    @property
    def stops_run(self) -> bool:
        """No later request can succeed: the run stops asking."""
        return self in (Status.UNREACHABLE, Status.AUTH_ERROR)
