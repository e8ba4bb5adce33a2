"""`evalkit run`: evaluate SAEs and write the output folder (docs/cli.md)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.app.executors import check_executor, execution_info, make_runner
from evalkit.app.inputs import check_cached_when_offline, check_local_inputs, hub_names
from evalkit.app.request import RunRequest, batch_tokens
from evalkit.app.run_args import add_run_arguments
from evalkit.core.errors import EvalkitInputError
from evalkit.core.hub import prepare_hub

# Everything heavy (torch, sae-lens, the engine, the metrics) is imported inside the functions that run, so
# `evalkit run --help` answers in well under a second (tests/test_app_startup.py).
if TYPE_CHECKING:
    from evalkit.core.identity import JsonValue
    from evalkit.engine.runconfig import DataSource, EvalSettings, SaeLike
    from evalkit.engine.runner import RunOutcome
    from evalkit.sources.base import ActivationSource
    from metrics.base import MetricSpec

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "run",
        help="evaluate SAEs and write results to --out",
        description="Evaluate SAEs on activations in one pass and write tidy results.",
    )
    add_run_arguments(p)
    p.set_defaults(func=run_command)


def load_all_saes(
    paths: Sequence[str],
    fmt: str | None,
    device: str,
    dtype: str,
    failures: list[EvalkitInputError] | None = None,
) -> list[SaeLike]:
    """Every SAE of every --sae path; with `failures`, a bad SAE is recorded there and the others load."""
    import torch

    from evalkit.sae.loaders.formats import load_saes

    saes: list[SaeLike] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            loaded = load_saes(path, format=fmt, device=device, failures=failures)
        except EvalkitInputError as exc:  # the path itself (missing, no SAE at all) or a single bad SAE
            if failures is None:
                raise
            failures.append(exc)
            continue
        for s in loaded:
            if s.sae_id in seen and seen[s.sae_id] != s.path:
                raise EvalkitInputError(s.path, f"has the same SAE id {s.sae_id!r} as {seen[s.sae_id]}; rename one")
            if s.sae_id not in seen:
                seen[s.sae_id] = s.path
                if dtype != "float32":
                    s.sae.to(getattr(torch, dtype))
                saes.append(s)
    return saes


def _adapt(source: ActivationSource, hook: str) -> DataSource:
    """An evalkit.sources source as the runner's DataSource (a model source brings its model, for CE/KL)."""
    from evalkit.engine.runconfig import DataSource

    info = source.info.as_dict()
    description: dict[str, JsonValue] = {
        k: v if isinstance(v, str | int | float | bool) or v is None else str(v) for k, v in info.items()
    }
    iter_from = getattr(source, "iter_from", None)  # a model source skips batches without running the model
    return DataSource(
        lambda: iter(source),
        description,
        source.model,
        hook,
        fingerprint=source.info.fingerprint,
        has_tokens=source.has_tokens,
        label_names=tuple(source.label_names),
        d_in=source.d_in,
        open_batches_from=iter_from if callable(iter_from) else None,
    )


def resolve_sources(
    req: RunRequest, saes: Sequence[SaeLike], failures: list[EvalkitInputError] | None = None
) -> tuple[dict[str, DataSource], dict[str, str]]:
    """The data for each hook and the hook each SAE is evaluated at, in docs/cli.md's order of precedence:
    --activations, then a model (--model/--hook/--dataset, defaults from the SAE configs), then the embedded
    world."""
    from evalkit.sources.factory import open_source

    # Ask the source for headroom: --tokens counts evaluation tokens, after special tokens are dropped; the
    # runner stops reading once it has them, so the extra is never computed.
    n_read = None if req.tokens is None else 2 * req.tokens + 1024
    common = {
        "labels": req.labels,
        "n_tokens": n_read,
        "batch_size": batch_tokens(req.batch_size, req.device),
        "device": req.device,
        "dtype": req.dtype,  # the model runs in --dtype too (bfloat16 on a GPU); metrics accumulate in float64
        "seed": req.seed,
    }
    if req.seq_len:
        common["seq_len"] = req.seq_len
    if req.activations:
        hooks = {s.hook_name for s in saes}
        hook = req.hook or (hooks.pop() if len(hooks) == 1 and None not in hooks else "activations")
        source = open_source(activations=req.activations, **common)
        return {hook: _adapt(source, hook)}, {s.sae_id: hook for s in saes}
    if req.model or req.hook or req.dataset:
        return model_sources(req, saes, common)
    # `req.world` (a built World) is set by `evalkit demo` (any world size); the run CLI leaves it unset.
    source = open_source(world=req.world, **common)
    hook = str(source.hook_name or "")
    hook_of = {}
    for s in saes:
        problem = _world_mismatch(s, hook, source.info.fingerprint)
        if problem is not None:
            exc = EvalkitInputError(s.path, problem)
            if failures is None:
                raise exc
            failures.append(exc)
            continue
        hook_of[s.sae_id] = hook
    return {hook: _adapt(source, hook)}, hook_of


def _world_mismatch(sae: SaeLike, hook: str, source_fingerprint: str) -> str | None:
    """Why `sae` cannot be evaluated on the embedded world this run opened, or None.

    A zoo SAE records the world it was trained on (metadata `trained_on`, e.g. world:default:<key>); a world built
    from other code (another key) has other activations at the same hook, and its numbers would be meaningless."""
    if sae.hook_name not in (None, hook):
        return (
            f"was trained at {sae.hook_name}, not the embedded world's hook {hook}; "
            "pass --model/--hook/--dataset or --activations"
        )
    metadata = (getattr(sae, "cfg", None) or {}).get("metadata") or {}
    trained_on = metadata.get("trained_on") if isinstance(metadata, dict) else None
    if isinstance(trained_on, str) and trained_on.startswith("world:"):
        world = trained_on.split()[0]
        if not source_fingerprint.startswith(world + ":"):
            current = source_fingerprint.split(":hook=")[0]
            return (
                f"was trained on the embedded world {world}, not on the one this evalkit builds ({current}); "
                f"evaluate it with --model {metadata.get('model_name', '<its world model folder>')} "
                "--hook/--dataset, or retrain it (evalkit demo rebuilds the zoo)"
            )
    return None


def model_sources(
    req: RunRequest, saes: Sequence[SaeLike], common: dict[str, Any]
) -> tuple[dict[str, DataSource], dict[str, str]]:
    """One model source per hook; what the flags leave open comes from the SAEs' metadata (model, hook,
    context size, prepend-BOS, model processing). An SAE whose d_in is not the width of the model's
    activations at its hook is bad input, found here before the pass."""
    from evalkit.sources.factory import open_source
    from evalkit.sources.sae_defaults import check_widths, hook_of, model_defaults

    hooks = hook_of(saes, req.hook)
    sources = {}
    for hook in dict.fromkeys(hooks.values()):
        members = [s for s in saes if hooks[s.sae_id] == hook]
        d = model_defaults(members, req.model, hook)
        source = open_source(
            model=d.model,
            hook=hook,
            dataset=req.dataset,
            text_column=req.text_column,
            prepend_bos=d.prepend_bos,
            from_pretrained_kwargs=d.from_pretrained_kwargs,
            default_seq_len=d.seq_len,
            **common,
        )
        check_widths(members, source.d_in, d.model, hook)
        sources[hook] = _adapt(source, hook)
    return sources, hooks


def run_info(
    req: RunRequest,
    settings: EvalSettings,
    specs: list[MetricSpec],
    outcome: RunOutcome,
    saes: Sequence[SaeLike],
    notes: list[str],
    wall_s: float,
) -> dict[str, JsonValue]:
    from evalkit.core.io import evalkit_version
    from evalkit.engine.runconfig import seed_groups
    from evalkit.engine.runner import context_for

    sources: dict[str, JsonValue] = {}
    for hook, data in outcome.hooks.items():
        sources[hook] = {
            "description": data.source.description,
            "fingerprint": data.fingerprint,
            "n_tokens": data.ctx.n_tokens,
            "n_tokens_read": data.n_tokens_read,
            "n_special_excluded": data.n_special_excluded,
            "n_norm_dropped": data.n_norm_dropped,
            "norm_limit": data.norm_limit,
            "context": context_for(data.ctx),
        }
    n_tokens = {h: d.ctx.n_tokens for h, d in outcome.hooks.items()}
    return {
        "evalkit_version": evalkit_version(),
        "config": {
            **settings.hashed(),
            "device": settings.device,
            "metrics": [s.name for s in specs],
            "sae": list(req.sae),
            "activations": req.activations,
            "model": req.model,
            "hook": req.hook,
            "dataset": req.dataset,
            "autointerp": req.autointerp,
            "llm_model": req.llm_model,
            "labels": req.labels,
            "seed_group": list(req.seed_group),
        },
        "sources": sources,
        "n_tokens": next(iter(n_tokens.values())) if len(n_tokens) == 1 else n_tokens,  # type: ignore[dict-item]
        "saes": [
            {
                "sae_id": r.handle.sae_id,
                "path": r.handle.path,
                "content_hash": r.handle.content_hash,
                "hook": r.hook,
                "architecture": r.handle.architecture,
                "family": r.handle.family,
                "seed": r.handle.seed,
            }
            for r in outcome.results
        ],
        "seed_groups": [[s.sae_id for s in g] for g in seed_groups(saes, req.explicit_groups())],
        "skipped": [
            {"entry": n.entry, "metrics": list(n.metrics), "reason": n.reason, "sae_ids": n.sae_ids}
            for n in outcome.skipped
        ]
        + [{"entry": "notes", "reason": n} for n in notes],
        "execution": {
            "timings_s": {k: round(v, 3) for k, v in outcome.timings_s.items()},
            "wall_s": round(wall_s, 3),
            "computed": len(outcome.computed),
            "reused": len(outcome.reused),
        },
    }


def run_command(args: argparse.Namespace) -> int:
    """`evalkit run`: the request its options stand for."""
    return run(RunRequest.from_args(args))


def run(req: RunRequest) -> int:
    """Evaluate what `req` asks for and write the output folder; the CLI, the demo and the tests call this."""
    # Before anything slow or networked (the engine's imports take seconds): a missing local file, or a hub name
    # that is neither reachable nor cached, is one line and exit 2.
    check_local_inputs(req)
    prepare_hub(hub_names(req))
    check_cached_when_offline(req)
    # Many small scikit-learn fits (probing): multi-threaded BLAS made each one ~25x slower on 2 busy cores,
    # so every run (not only the demo) uses one BLAS thread; torch's own thread pool is left alone.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _run(req)


def _run(req: RunRequest) -> int:
    from evalkit.core.io import sweep_temp_files
    from evalkit.engine.outlock import OutputLock
    from evalkit.engine.preflight import prepare_output
    from metrics.base import GROUPS, select_metrics

    t0 = time.perf_counter()
    settings = req.settings()
    check_executor(req)
    # Group order (core, downstream, sparsity, ...) makes summary.csv read headline-first.
    specs = sorted(select_metrics(req.metrics), key=lambda s: GROUPS.index(s.group))
    if not specs and req.autointerp == "off" and "autointerp" not in req.metrics:
        raise EvalkitInputError("--metrics", f"selects no metric ({req.metrics!r}); name metrics or groups, or all")
    prepare_output(req.out)  # seconds, before anything is loaded: a read-only --out fails here
    with OutputLock(req.out, wait=req.wait):
        sweep_temp_files(Path(req.out))
        return _locked_run(req, settings, specs, t0)


def _preflight(
    req: RunRequest,
) -> tuple[list[SaeLike], dict[str, DataSource], dict[str, str], list[dict[str, str]]]:
    """Load and check every SAE and the data before the pass. A bad SAE is reported and left out (the run
    then exits 2); with --strict, or when none is left, the first failure stops the run."""
    from evalkit.engine.preflight import check_sae

    failures: list[EvalkitInputError] = []
    saes = load_all_saes(req.sae, req.format, req.device, req.dtype, failures)
    if failures and (req.strict or not saes):
        raise failures[0]
    sources, hook_of = resolve_sources(req, saes, failures)
    d_in = {hook: src.d_in for hook, src in sources.items()}
    good: list[SaeLike] = []
    for s in (s for s in saes if s.sae_id in hook_of):
        try:
            check_sae(s, d_in.get(hook_of[s.sae_id]))
        except EvalkitInputError as exc:
            failures.append(exc)
            continue
        good.append(s)
    if failures and (req.strict or not good):
        raise failures[0]
    for exc in failures:
        log.error("%s (skipped; the other SAEs are evaluated, exit code 2)", exc)
    return (
        good,
        sources,
        {k: v for k, v in hook_of.items() if any(s.sae_id == k for s in good)},
        [{"path": str(exc.where), "reason": exc.problem} for exc in failures],
    )


def _locked_run(req: RunRequest, settings: EvalSettings, specs: list[MetricSpec], t0: float) -> int:
    from evalkit.app.run_autointerp import AutointerpStage
    from evalkit.core.io import atomic_write_text
    from evalkit.engine.outputs import SaeOutput, write_outputs
    from evalkit.engine.store import ResultStore

    saes, sources, hook_of, bad = _preflight(req)
    by_workers = 0
    if req.executor == "local" and (req.workers or 1) > 1 and len(saes) > 1:
        from evalkit.app.parallel import collecting_request, evaluate_in_workers

        n_by_workers = evaluate_in_workers(req, settings, specs, saes, sources, hook_of)
        if n_by_workers is not None:
            by_workers = n_by_workers
            req = collecting_request(req)
            settings = req.settings()
    store = ResultStore(req.out)
    stage = AutointerpStage(req, settings, store, saes, sources, hook_of) if req.autointerp != "off" else None
    runner = make_runner(req, settings, specs, store, [stage.observer] if stage else [])
    outcome = runner.run(saes, sources, req.explicit_groups(), hook_of)
    notes: list[str] = []
    if stage is not None:
        n_tokens = {h: d.ctx.n_tokens for h, d in outcome.hooks.items()}
        shards, autointerp_csv, stop_notes = stage.finish(saes, hook_of, n_tokens)
        for r in outcome.results:
            r.shards.append(shards[r.handle.sae_id])
        atomic_write_text(Path(req.out) / "autointerp.csv", autointerp_csv)
        notes += stop_notes
    outputs = [SaeOutput(r.handle, r.hook, r.shards) for r in outcome.results]
    has_model = any(h.source.model is not None for h in outcome.hooks.values())
    eval_config: dict[str, JsonValue] = {
        **settings.hashed(),
        "model_name": req.model or next((getattr(s, "model_name", None) for s in saes), None),
        "dataset": req.dataset,
        "activations": req.activations,
        "compute_ce_loss": has_model,
        "compute_kl": has_model,
    }
    info = run_info(req, settings, specs, outcome, saes, notes, time.perf_counter() - t0)
    info["failed"] = bad  # type: ignore[assignment]
    info["execution"]["passes"] = outcome.passes  # type: ignore[index]
    if stage is not None and stage.llm_usage:
        info["execution"]["llm_usage"] = stage.llm_usage  # type: ignore[index]
    info["execution"].update(execution_info(runner))  # type: ignore[union-attr]
    # Results the worker processes computed were computed by this run; the collecting pass only read them back.
    n_computed, n_reused = len(outcome.computed) + by_workers, len(outcome.reused) - by_workers
    info["execution"].update({"computed": n_computed, "reused": n_reused, "computed_by_workers": by_workers})  # type: ignore[union-attr]
    write_outputs(req.out, outputs, info, eval_config)
    log.info(
        "evaluated %d SAE(s): %d result(s) computed, %d reused; wrote %s", len(saes), n_computed, n_reused, req.out
    )
    if not req.no_report:
        from reports.html import write_report

        write_report(req.out)
    if bad:
        log.error(
            "%d SAE(s) failed before the pass (run.json 'failed'): %s", len(bad), ", ".join(b["path"] for b in bad)
        )
        return 2
    return 0
