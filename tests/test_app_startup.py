"""`evalkit --help` and every subcommand's `--help` import no heavy library (benchmarks/bench_startup.py times
them); the light copies of defaults the parsers show agree with the modules that own them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evalkit.app.cli import COMMAND_MODULES

HEAVY = (
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "sae_lens",
    "transformer_lens",
    "transformers",
    "safetensors",
    "plotly",
    "jinja2",
    "openai",
    "pyarrow",
)
COMMANDS = ("", "run", "report", "compare", "world", "zoo", "demo")
PROBE = """
import json, sys
from evalkit.app.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = json.loads({heavy!r})
sys.stderr.write(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_no_heavy_module(command: str) -> None:
    argv = [*command.split(), "--help"]
    code = PROBE.format(heavy=json.dumps(HEAVY))
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "usage: evalkit" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == [], f"`evalkit {command} --help` imported these"


def test_every_command_module_is_listed_in_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "evalkit", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    for command in COMMANDS[1:]:
        assert command in done.stdout
    assert len(COMMAND_MODULES) == 4


def test_light_defaults_agree_with_their_owners() -> None:
    import torch

    from evalkit.core.defaults import DEFAULT_BATCH_TOKENS, DTYPE_NAMES, WORLD_SIZE_NAMES
    from evalkit.engine.runconfig import EvalSettings
    from evalkit.world.build import SIZES

    assert WORLD_SIZE_NAMES == tuple(sorted(SIZES))
    assert all(isinstance(getattr(torch, name), torch.dtype) for name in DTYPE_NAMES)
    assert EvalSettings().batch_size == DEFAULT_BATCH_TOKENS
