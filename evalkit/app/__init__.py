"""The application layer: the CLI, the demo and the autointerp stage wiring; the only code that imports autointerp and
reports."""
