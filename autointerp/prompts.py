"""The explainer's prompt, snippet rendering, and the reply parsers; each scorer's own prompt lives with the scorer
(autointerp.scorers). Written for evalkit (not copied).

A parser returns None when a reply does not follow the requested format; callers count that as a parse failure
and give no score, because a silently wrong score is worse than a missing one.
"""

from __future__ import annotations

import re

Message = dict[str, str]

MAX_EXPLANATION_WORDS = 20

_EXPLAIN_SYSTEM = (
    "You study one unit (a 'latent') of a sparse autoencoder trained on a language model's "
    "activations. You get text snippets where the latent is active; tokens on which it is active are "
    "wrapped in <<double angle brackets>>. Work out what the marked tokens have in common, taking the "
    "surrounding words into account when they matter. Reply with a single short phrase of at most "
    f"{MAX_EXPLANATION_WORDS} words describing when the latent is active, on one line starting with "
    "'Explanation:'. No other text."
)


def render_window(tokens: list[str], highlight: list[bool] | None = None) -> str:
    """Join token strings into text, wrapping runs of highlighted tokens in << >>.

    Sub-word tokenizers carry their own leading spaces; word-level ones do not, so words are then joined by
    spaces.
    """
    sep = "" if any(t[:1].isspace() for t in tokens) else " "
    parts: list[str] = []
    in_run = False
    for j, tok in enumerate(tokens):
        on = bool(highlight[j]) if highlight is not None else False
        core = tok.lstrip() or tok
        lead = (sep if j > 0 else "") + tok[: len(tok) - len(core)]
        opener = "<<" if on and not in_run else ""
        closer = ">>" if in_run and not on else ""
        parts.append(f"{closer}{lead}{opener}{core}")
        in_run = on
    if in_run:
        parts.append(">>")
    return "".join(parts).replace("\n", "\\n")


def numbered(snippets: list[str]) -> str:
    return "\n".join(f"Snippet {k + 1}: {s}" for k, s in enumerate(snippets))


def explain_messages(snippets: list[str]) -> list[Message]:
    return [
        {"role": "system", "content": _EXPLAIN_SYSTEM},
        {"role": "user", "content": f"{numbered(snippets)}\n\nWhat makes the latent active?"},
    ]


def parse_explanation(reply: str) -> str | None:
    """The phrase after 'Explanation:' (or the only non-empty line), at most MAX_EXPLANATION_WORDS words."""
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    tagged = [ln for ln in lines if ln.lower().startswith("explanation:")]
    if tagged:
        text = tagged[0].split(":", 1)[1]
    elif len(lines) == 1:
        text = lines[0]
    else:
        return None
    text = text.strip().strip("\"'`").strip()
    if not text or len(text.split()) > MAX_EXPLANATION_WORDS:
        return None
    return text


def parse_selection(reply: str, n_snippets: int) -> set[int] | None:
    """Zero-based indices of the snippets named after 'Answer:'; None when the reply is off-format or out of
    range."""
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    tagged = [ln for ln in lines if ln.lower().startswith("answer:")]
    if len(tagged) != 1:
        return None
    body = tagged[0].split(":", 1)[1].strip().rstrip(".")
    if body.lower() in ("none", "[]", ""):
        return set() if body.lower() != "" else None
    if not re.fullmatch(r"[\s\d,\[\]]+", body):
        return None
    numbers = [int(x) for x in re.findall(r"\d+", body)]
    if not numbers or any(not 1 <= k <= n_snippets for k in numbers):
        return None
    return {k - 1 for k in numbers}


def parse_simulation(reply: str, lengths: list[int]) -> list[list[float]] | None:
    """Per-snippet integer predictions (0-10) with exactly the requested lengths; None otherwise."""
    found: dict[int, list[float]] = {}
    for m in re.finditer(r"Snippet\s+(\d+)\s*:\s*\[([^\]]*)\]", reply):
        values = [v.strip() for v in m.group(2).split(",") if v.strip()]
        if not all(re.fullmatch(r"\d+", v) for v in values):
            return None
        found[int(m.group(1)) - 1] = [min(10.0, float(v)) for v in values]
    if sorted(found) != list(range(len(lengths))):
        return None
    if any(len(found[k]) != n for k, n in enumerate(lengths)):
        return None
    return [found[k] for k in range(len(lengths))]
