"""What a model source takes from the SAEs it serves when the command line leaves it open.

sae-lens keeps, in an SAE's config metadata, how it was trained: `model_name`, `hook_name`, `context_size`,
`prepend_bos`, `model_from_pretrained_kwargs` (e.g. gpt2-small-res-jb's `center_writing_weights`) and
`dataset_path`. Normalisation (`normalize_activations`) needs nothing here: sae-lens applies it inside the SAE's
own encode/decode. A flag on the command line always wins; SAEs that disagree on a value no flag settles are bad
input (exit 2), never a silent pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evalkit.core.errors import EvalkitInputError


@dataclass(frozen=True)
class ModelDefaults:
    """The model-source settings for one hook: from the flags, else agreed by its SAEs' metadata."""

    model: str
    hook: str
    seq_len: int | None
    """The SAEs' training context size (None: evalkit's default); an explicit --seq-len overrides it."""
    prepend_bos: bool
    from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)


def _meta(sae_like: object, key: str) -> Any:
    metadata = getattr(getattr(getattr(sae_like, "sae", None), "cfg", None), "metadata", None)
    return getattr(metadata, key, None)


def _agreed(saes: Sequence[Any], key: str, flag: str) -> Any:
    """The one value the SAEs' metadata gives for `key` (None when none gives one); disagreement is exit 2."""
    values = {repr(v): (v, s) for s in saes if (v := _meta(s, key)) is not None}
    if len(values) > 1:
        listed = "; ".join(f"{s.path}: {v!r}" for v, s in values.values())
        raise EvalkitInputError(saes[0].path, f"SAEs at one hook disagree on {key} ({listed}); pass {flag}")
    return next(iter(values.values()))[0] if values else None


def same_model_name(a: str, b: object) -> bool:
    """Whether two names are one model: equal, or aliases transformer-lens resolves to one official name
    (`gpt2` and gpt2-small-res-jb's `gpt2-small`). Local paths and unknown names match only themselves."""
    if not isinstance(b, str):
        return False
    if a == b:
        return True
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return bool(get_official_model_name(a) == get_official_model_name(b))
    except ValueError:
        return False


def model_defaults(saes: Sequence[Any], model: str | None, hook: str) -> ModelDefaults:
    """Settings for the model source serving `saes` (all evaluated at `hook`)."""
    sae_model = _agreed(saes, "model_name", "--model")
    chosen = model or sae_model
    if not chosen:
        raise EvalkitInputError(saes[0].path, "its config names no model_name; pass --model")
    context = _agreed(saes, "context_size", "--seq-len")
    prepend = _agreed(saes, "prepend_bos", "separate runs for the two settings")
    # The SAE's model processing applies only to the model it was trained on (under any of its names).
    same_model = model is None or same_model_name(model, sae_model)
    kwargs = _agreed(saes, "model_from_pretrained_kwargs", "--model") if same_model else None
    return ModelDefaults(
        model=str(chosen),
        hook=hook,
        seq_len=int(context) if context else None,
        prepend_bos=True if prepend is None else bool(prepend),
        from_pretrained_kwargs=dict(kwargs or {}),
    )


def hook_of(saes: Sequence[Any], hook: str | None) -> dict[str, str]:
    """sae_id -> the hook it is evaluated at: --hook, else the SAE's own hook_name (exit 2 when it has none)."""
    out = {}
    for s in saes:
        chosen = hook or s.hook_name
        if not chosen:
            raise EvalkitInputError(s.path, "its config names no hook_name; pass --hook")
        out[s.sae_id] = str(chosen)
    return out


def check_widths(saes: Sequence[Any], d_model: int, model: str, hook: str) -> None:
    """Every SAE's d_in equals the width of the model's activations at the hook (checked before the pass)."""
    for s in saes:
        if int(s.d_in) != int(d_model):
            raise EvalkitInputError(
                s.path, f"SAE d_in {s.d_in} does not match model {model}'s activations at {hook} (width {d_model})"
            )
