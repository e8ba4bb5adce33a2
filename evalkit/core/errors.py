"""The one exception type evalkit raises for bad input.

The CLI turns it into exit code 2 and a single line; the Python API lets it propagate. The message always names the file
(or option) at fault and the problem, so a user can act on it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class EvalkitInputError(Exception):
    """Bad user input: a corrupt or mismatched file, an unknown name, an unreachable endpoint."""

    def __init__(self, where: str | Path | None, problem: str) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)
