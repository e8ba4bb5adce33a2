"""Issue #14, unit level: config validation, durable checksummed files, the output lock, pre-flight, one-line
torch.load errors, label checks, integer activations, and the LLM client's usage accounting.

Each test names the issue item it covers; every one of them failed on the main branch before the fix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.llm_server import LLMServer
from safetensors.torch import save_file

from autointerp.pipeline import config_for_mode, run_autointerp
from evalkit.core.errors import EvalkitInputError
from evalkit.core.io import dump_checked, load_checked, sweep_temp_files
from evalkit.core.records import MetricValue, ResultKey, Shard
from evalkit.core.safeload import load_weights_only
from evalkit.engine.outlock import LOCK_NAME, OutputLock
from evalkit.engine.preflight import prepare_output
from evalkit.engine.store import ResultStore
from evalkit.sae.factory import make_sae
from evalkit.sae.loaders.formats import load_saes
from evalkit.sources.files import ActivationFileSource
from evalkit.sources.labels import LabelFile, LabelledSource


def _saved(tmp_path: Path, variant: str, **cfg_edit: Any) -> Path:
    folder = tmp_path / f"{variant}-sae"
    make_sae(variant).save_model(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in cfg_edit.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------------------------- 1, 3: config validation

CONFIG_CASES = {
    "topk without k": ("topk", {"k": None}, "missing field 'k', required for architecture topk"),
    "k above d_sae": ("topk", {"k": 100000}, "field 'k' must satisfy 0 < k <= d_sae (32), got 100000"),
    "k zero": ("topk", {"k": 0}, "field 'k' must satisfy 0 < k <= d_sae (32), got 0"),
    "negative d_sae": ("standard", {"d_sae": -5}, "field 'd_sae' must be > 0, got -5"),
    "cosine without k": ("cosine", {"k": None}, "missing field 'k', required for architecture cosine"),
    "unknown dtype": ("standard", {"dtype": "int8"}, "field 'dtype' must be a floating-point dtype name"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_is_validated_per_architecture(case: str, tmp_path: Path) -> None:
    variant, edit, problem = CONFIG_CASES[case]
    folder = _saved(tmp_path, variant, **edit)
    with pytest.raises(EvalkitInputError) as info:
        load_saes(folder)
    assert str(info.value) == f"{folder / 'cfg.json'}: {problem}" or problem in str(info.value), str(info.value)
    assert "cfg.json" in str(info.value) and "\n" not in str(info.value)


def test_negative_jumprelu_threshold_and_integer_weights_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = _saved(tmp_path, "jumprelu")
    weights = folder / "sae_weights.safetensors"
    state = load_file(weights)
    save_file({**state, "threshold": -state["threshold"]}, weights)
    with pytest.raises(EvalkitInputError, match="'threshold' has 32 negative value"):
        load_saes(folder)
    save_file({**state, "W_enc": state["W_enc"].round().to(torch.int32)}, weights)
    with pytest.raises(EvalkitInputError, match="'W_enc' has dtype int32; SAE weights must be floating point"):
        load_saes(folder)


def test_one_bad_sae_among_good_ones_is_collected_not_raised(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        make_sae("topk").save_model(tmp_path / "zoo" / name)
    bad = _saved(tmp_path / "zoo", "topk", k=100000)
    failures: list[EvalkitInputError] = []
    loaded = load_saes(tmp_path / "zoo", failures=failures)
    assert sorted(s.sae_id for s in loaded) == ["a", "b", "c"]
    assert len(failures) == 1 and failures[0].where == str(bad / "cfg.json")


# ------------------------------------------------------------------------- 7: checksummed, fsynced records


def _shard() -> Shard:
    return Shard(ResultKey("h" * 8, "reconstruction", "c" * 16), (MetricValue("fvu", 0.25),), 10, 1)


@pytest.mark.parametrize("damage", [b"", b"\x00garbage{", b"truncated"])
def test_damaged_shard_is_recomputed_with_a_warning_naming_it(damage: bytes, tmp_path: Path, caplog) -> None:
    store = ResultStore(tmp_path)
    shard = _shard()
    store.save(shard)
    assert store.get(shard.key) == shard
    path = store._path(shard.key)
    path.write_bytes(damage if damage != b"truncated" else path.read_bytes()[:-7])
    assert store.get(shard.key) is None and not store.has(shard.key)
    assert str(path) in caplog.text and "recomputing" in caplog.text


def test_a_valid_json_shard_with_a_changed_value_fails_its_checksum(tmp_path: Path, caplog) -> None:
    store = ResultStore(tmp_path)
    store.save(_shard())
    path = store._path(_shard().key)
    path.write_text(path.read_text().replace("0.25", "0.35"))
    assert store.get(_shard().key) is None and "checksum mismatch" in caplog.text


def test_records_round_trip_and_temporaries_are_swept(tmp_path: Path) -> None:
    dump_checked(tmp_path / "sub" / "r.json", {"x": [1.5, float("nan")], "y": "模型"})
    record = load_checked(tmp_path / "sub" / "r.json")
    assert record is not None and record["y"] == "模型"
    left = [tmp_path / ".results.csv.abc123.tmp", tmp_path / "sub" / ".shard.json.x.tmp", tmp_path / "report.html.tmp"]
    for p in left:
        p.write_text("half")
    assert sorted(sweep_temp_files(tmp_path)) == sorted(left)
    assert (tmp_path / "sub" / "r.json").exists() and not any(p.exists() for p in left)


# ------------------------------------------------------------------------------------------- 6: the lock

HOLD = (
    "import sys, time; from evalkit.engine.outlock import OutputLock; l = OutputLock(sys.argv[1]); l.acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def test_second_holder_is_refused_naming_the_pid_then_waits(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            EvalkitInputError, match=rf"in use by another evalkit run \(pid {holder.pid}\); pass --wait"
        ):
            OutputLock(tmp_path).acquire()
        t0 = time.monotonic()
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(0.5); os.kill({holder.pid}, 9)"])
        with OutputLock(tmp_path, wait=True):
            assert time.monotonic() - t0 >= 0.4  # it waited for the holder to go
        killer.wait()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "x"}))
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text and "999999" in caplog.text
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean exit leaves no stale record


# --------------------------------------------------------------------------------------- 2: pre-flight


def test_output_that_is_a_file_or_impossible_fails_at_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(EvalkitInputError, match="is a file, not a folder"):
        prepare_output(tmp_path / "f")
    with pytest.raises(EvalkitInputError, match="cannot create the output folder"):
        prepare_output(Path("/proc/evalkit-out"))
    prepare_output(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())


# ------------------------------------------------------------------------------- 9: labels, 11: dtypes


def _labels(path: Path, labels: torch.Tensor) -> Path:
    save_file({"labels": labels}, path, metadata={"label_names": json.dumps(["a", "b"])})
    return path


def test_labels_rows_and_values_are_checked_before_the_pass(tmp_path: Path) -> None:
    save_file({"activations": torch.randn(6, 4, 8)}, tmp_path / "acts.safetensors")
    source = ActivationFileSource(tmp_path / "acts.safetensors")
    ok = LabelledSource(source, LabelFile(_labels(tmp_path / "ok.safetensors", torch.ones(24, 2, dtype=torch.bool))))
    assert ok.labels.n_rows == 24
    with pytest.raises(EvalkitInputError, match="has 30 label rows but .*acts.safetensors has 24 token rows"):
        LabelledSource(source, LabelFile(_labels(tmp_path / "long.safetensors", torch.zeros(30, 2))))
    with pytest.raises(EvalkitInputError, match="has 20 label rows but .* has 24 token rows"):
        LabelledSource(source, LabelFile(_labels(tmp_path / "short.safetensors", torch.zeros(20, 2))))
    values = torch.zeros(24, 2)
    values[5, 1] = 2.0
    with pytest.raises(EvalkitInputError, match=r"only 0/1, found 2.0 at row 5, label 'b'"):
        LabelFile(_labels(tmp_path / "two.safetensors", values))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_and_bool_activations_are_refused(dtype: torch.dtype, tmp_path: Path) -> None:
    save_file({"activations": torch.ones(6, 4, 8).to(dtype)}, tmp_path / "acts.safetensors")
    with pytest.raises(EvalkitInputError, match="activations have dtype .*; evalkit needs floating-point"):
        ActivationFileSource(tmp_path / "acts.safetensors")


# ------------------------------------------------------------------------------------ 11: pickle messages


def test_unsafe_or_corrupt_pickles_fail_in_one_plain_line(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2), "evil": Path("/")}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage" * 5)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:60])
    for name in ("evil.pt", "garbage.pt", "cut.pt"):
        with pytest.raises(EvalkitInputError) as info:
            load_weights_only(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: unreadable or corrupt torch file"), message
        assert "\n" not in message and "\x1b" not in message and "weights_only" not in message, message
    with pytest.raises(EvalkitInputError, match=r"pickled Python object \(pathlib"):
        load_weights_only(tmp_path / "evil.pt")


# --------------------------------------------------------------------------------- 5, 10: LLM accounting


def _same_answer(body: dict[str, Any]) -> str:
    return "Explanation: the same thing" if "Explanation" in body["messages"][0]["content"] else "Answer: 1"


def test_identical_prompts_are_sent_once_and_cached_usage_counts(tmp_path: Path) -> None:
    from helpers.planted_autointerp import decode, planted_examples

    from autointerp.config import AutointerpConfig

    examples = planted_examples(AutointerpConfig())
    with LLMServer(_same_answer) as srv:
        config = config_for_mode("llm", base_url=srv.base_url, explainer_model="m", scorer_model="m", max_retries=0)
        assert config is not None
        first = run_autointerp(examples, decode, config, tmp_path / "cache")
        bodies = [json.dumps(b["messages"], sort_keys=True) for b in srv.log.bodies]
        assert len(bodies) == len(set(bodies)) == first.usage.requests  # every explanation is the same text:
        # each latent's shuffled-control prompt equals its detection prompt and is not sent twice
        second = run_autointerp(examples, decode, config, tmp_path / "cache")
    assert second.sent.requests == 0 and second.usage.requests == first.usage.requests
    assert second.usage.cost_usd == first.usage.cost_usd and first.usage.cost_usd > 0


def test_cost_cap_message_states_the_true_total(tmp_path: Path) -> None:
    from helpers.planted_autointerp import decode, planted_examples

    from autointerp.config import AutointerpConfig

    examples = planted_examples(AutointerpConfig())
    with LLMServer(_same_answer, reply_delay_s=0.05) as srv:
        config = config_for_mode(
            "llm", base_url=srv.base_url, explainer_model="m", scorer_model="m", max_cost_usd=0.0005, concurrency=4
        )
        assert config is not None
        result = run_autointerp(examples, decode, config, None)
    assert result.stop_reason is not None
    total = float(re.search(r"\$([0-9.]+) spent in total", result.stop_reason).group(1))  # type: ignore[union-attr]
    assert total == pytest.approx(result.usage.cost_usd, abs=1e-4) and total >= 0.0005
    # at most the requests in flight when the cap was reached (concurrency 4) were sent after it
    per_request = result.usage.cost_usd / result.usage.requests
    assert result.usage.cost_usd < 0.0005 + 4 * per_request + 1e-12


# ------------------------------------------------------------------------------------ 4: collision-free stems


def test_file_stems_never_collide() -> None:
    from evalkit.core.io import file_stem

    ids = ["a b", "a_b", "模型", "字典", "A", "a", "x/y", "x_y", "x_y-" + file_stem("x/y").rsplit("-", 1)[1], ".hidden"]
    stems = [file_stem(i) for i in ids]
    assert len(set(stems)) == len(ids), stems
    assert file_stem("a_b") == "a_b" and file_stem("topk_k32_seed1") == "topk_k32_seed1"  # readable ids unchanged
    assert file_stem("a b").startswith("a_b-") and all(re.fullmatch(r"[A-Za-z0-9._-]+", s) for s in stems)
    assert not any(s.startswith(".") for s in stems)
