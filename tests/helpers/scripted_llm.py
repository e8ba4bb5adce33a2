"""A scripted chat model for tests/helpers/llm_server.LLMServer: it answers the planted world
(tests/helpers/planted_autointerp.py) correctly for every prompt evalkit's explainer and scorers send (detection,
fuzzing, simulation), so the LLM path scores the planted latents perfectly unless a fault is injected."""

from __future__ import annotations

import ast
import re
from collections import Counter
from typing import Any

from autointerp import prompts, scorers
from autointerp.config import AutointerpConfig
from autointerp.pipeline import config_for_mode

EXPLAIN_SYSTEM = prompts.explain_messages([])[0]["content"]
FUZZING_SYSTEM = scorers.FUZZING_SYSTEM
SIMULATION_SYSTEM = scorers.SIMULATION_SYSTEM
KEY = "sk-evalkit-test-7Hq2ZpL9"
MODEL = "scripted-model"


def scripted_llm(body: dict[str, Any]) -> str:
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if system == EXPLAIN_SYSTEM:
        word = Counter(" ".join(re.findall(r"<<(.+?)>>", user)).split()).most_common(1)[0][0]
        return f"Explanation: the word {word}"
    word = re.search(r"Description: the word (\S+)", user).group(1)  # type: ignore[union-attr]
    if system == SIMULATION_SYSTEM:
        lists = [ast.literal_eval(m) for m in re.findall(r"Snippet \d+: (\[.*\])", user)]
        return "\n".join(f"Snippet {k + 1}: {[10 if t == word else 0 for t in toks]}" for k, toks in enumerate(lists))
    chosen = []
    for k, text in re.findall(r"Snippet (\d+): (.*)", user):
        runs = re.findall(r"<<(.+?)>>", text) if system == FUZZING_SYSTEM else [text]
        marked = " ".join(runs).split()
        if word in marked and (system != FUZZING_SYSTEM or set(marked) == {word}):
            chosen.append(k)
    return "Answer: " + (", ".join(chosen) if chosen else "none")


def llm_config(base_url: str, **kw: Any) -> AutointerpConfig:
    base = dict(
        base_url=base_url,
        explainer_model=MODEL,
        scorer_model=MODEL,
        timeout_s=5.0,
        backoff_base_s=0.01,
        max_retries=2,
        prices={MODEL: (1000.0, 1000.0)},
    )
    config = config_for_mode("llm", **{**base, **kw})
    assert config is not None
    return config
