"""Checks that run before the pass, so bad input fails in seconds and not after hours of work.

- `prepare_output`: the output folder exists (created), is a folder, and a file can be written, fsynced and
  removed there (a read-only folder, a file, a path under /proc all fail here, exit 2).
- `check_sae`: one SAE against the data it will meet: d_in matches, and a trial forward pass on a few tokens
  runs and gives finite numbers of the right shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from evalkit.core.errors import EvalkitInputError
from evalkit.engine.runconfig import SaeLike

PROBE_TOKENS = 4


def prepare_output(out_dir: Path) -> None:
    """Create `out_dir` and prove it writable, or raise an EvalkitInputError naming it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalkitInputError(out_dir, "--out is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalkitInputError(out_dir, f"cannot create the output folder ({exc.strerror or exc})") from None
    probe = out_dir / f".evalkit-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise EvalkitInputError(out_dir, f"output folder is not writable ({exc.strerror or exc})") from None


@torch.no_grad()
def check_sae(s: SaeLike, d_in: int | None) -> None:
    """d_in against the activations, then a trial encode/decode of a few random tokens."""
    if d_in is not None and s.d_in != d_in:
        raise EvalkitInputError(s.path, f"SAE d_in {s.d_in} does not match the activations' d_in {d_in}")
    sae = s.sae
    dtype = next((p.dtype for p in sae.parameters()), torch.float32)
    device = next((p.device for p in sae.parameters()), torch.device("cpu"))
    x_TD = torch.randn(PROBE_TOKENS, s.d_in, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    try:
        f_TF = sae.encode(x_TD)
        x_hat_TD = sae.decode(f_TF)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EvalkitInputError(s.path, f"fails a trial forward pass ({first[:200]})") from None
    if tuple(f_TF.shape) != (PROBE_TOKENS, s.d_sae) or tuple(x_hat_TD.shape) != (PROBE_TOKENS, s.d_in):
        raise EvalkitInputError(
            s.path,
            f"trial forward pass gave shapes {list(f_TF.shape)} / {list(x_hat_TD.shape)}, "
            f"expected {[PROBE_TOKENS, s.d_sae]} / {[PROBE_TOKENS, s.d_in]}",
        )
    if not bool(torch.isfinite(x_hat_TD).all()):
        raise EvalkitInputError(s.path, "trial forward pass gave NaN/Inf reconstructions")
