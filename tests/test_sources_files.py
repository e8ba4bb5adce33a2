"""Activation files and label files: formats, shapes, truncation, laziness, special tokens, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evalkit.core.errors import EvalkitInputError
from evalkit.sources.base import check_d_in
from evalkit.sources.factory import open_source
from evalkit.sources.files import ActivationFileSource, _Rows
from evalkit.sources.labels import LabelFile, LabelledSource


def _acts(n_seq: int = 6, seq_len: int = 4, d: int = 8) -> torch.Tensor:
    return torch.arange(n_seq * seq_len * d, dtype=torch.float32).reshape(n_seq, seq_len, d)


def _collect(source) -> torch.Tensor:
    return torch.cat([b.acts_BSD.reshape(-1, b.d_in) for b in source])


@pytest.mark.parametrize("suffix", [".safetensors", ".npy", ".pt"])
def test_formats_round_trip(tmp_path, suffix) -> None:
    acts = _acts()
    path = tmp_path / f"a{suffix}"
    if suffix == ".safetensors":
        save_file({"activations": acts}, str(path))
    elif suffix == ".npy":
        np.save(path, acts.numpy())
    else:
        torch.save({"activations": acts}, path)
    source = open_source(activations=path, batch_size=8)
    batches = list(source)
    assert [b.acts_BSD.shape for b in batches] == [(2, 4, 8)] * 3
    assert torch.equal(_collect(source), acts.reshape(-1, 8))
    assert source.d_in == 8 and source.info.name == "activations-file"


def test_flat_file_is_seq_len_one_and_n_tokens_truncates(tmp_path) -> None:
    flat = _acts().reshape(-1, 8)
    path = tmp_path / "flat.safetensors"
    save_file({"activations": flat}, str(path))
    source = ActivationFileSource(path, n_tokens=10, batch_size=4)
    batches = list(source)
    assert all(b.acts_BSD.shape[1] == 1 for b in batches)
    assert sum(b.n_tokens for b in batches) == 10
    assert torch.equal(_collect(source), flat[:10])
    assert not any(b.special_BS.any() for b in batches) and batches[0].tokens_BS is None


def test_tokens_positions_and_bos_masking(tmp_path) -> None:
    tokens = torch.randint(5, 50, (6, 4))
    tokens[:, 0] = 1  # a shared first token is taken as BOS and masked
    path = tmp_path / "t.safetensors"
    save_file({"activations": _acts(), "tokens": tokens}, str(path))
    batch = next(iter(ActivationFileSource(path)))
    assert torch.equal(batch.tokens_BS, tokens)
    assert batch.special_BS[:, 0].all() and not batch.special_BS[:, 1:].any()
    assert torch.equal(batch.positions_BS[0], torch.arange(4))
    path2 = tmp_path / "t2.safetensors"
    save_file(
        {"activations": _acts(), "tokens": tokens},
        str(path2),
        metadata={"special_token_ids": json.dumps([7])},
    )
    batch = next(iter(ActivationFileSource(path2)))
    assert torch.equal(batch.special_BS, tokens == 7)


def test_reading_is_lazy(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.safetensors"
    save_file({"activations": _acts(n_seq=50)}, str(path))
    calls: list[tuple[int, int]] = []
    original = _Rows.rows

    def spy(self, start, stop):
        calls.append((start, stop))
        return original(self, start, stop)

    monkeypatch.setattr(_Rows, "rows", spy)
    it = iter(ActivationFileSource(path, batch_size=8))
    assert calls == []
    next(it)
    assert calls == [(0, 2)]  # one batch read, nothing more


def test_labels_file_aligns_row_by_row(tmp_path) -> None:
    acts_path, labels_path = tmp_path / "a.safetensors", tmp_path / "l.safetensors"
    save_file({"activations": _acts()}, str(acts_path))
    labels = (torch.arange(24)[:, None] % torch.tensor([2, 3]) == 0).to(torch.uint8)
    save_file({"labels": labels}, str(labels_path), metadata={"label_names": json.dumps(["even", "by3"])})
    source = open_source(activations=acts_path, labels=labels_path, batch_size=8)
    got = [b for b in source]
    assert got[0].label_names == ("even", "by3")
    assert torch.equal(torch.cat([b.labels_BSL.reshape(-1, 2) for b in got]), labels.bool())
    assert isinstance(source, LabelledSource) and source.d_in == 8


def test_bad_activation_files(tmp_path) -> None:
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    wrong_key = tmp_path / "w.safetensors"
    save_file({"acts": _acts()}, str(wrong_key))
    wrong_ndim = tmp_path / "n.npy"
    np.save(wrong_ndim, np.zeros((2, 3, 4, 5), dtype=np.float32))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((4, 8), np.nan, dtype=np.float32))
    cases = {
        garbage: "cannot read",
        wrong_key: "no tensor named 'activations'",
        wrong_ndim: "shape",
        tmp_path / "missing.npy": "not found",
        tmp_path / "x.csv": "unsupported",
    }
    for path, message in cases.items():
        with pytest.raises(EvalkitInputError, match=message) as exc:
            list(ActivationFileSource(path))
        assert str(path) in str(exc.value)
    with pytest.raises(EvalkitInputError, match="NaN"):
        list(ActivationFileSource(nan))


def test_bad_label_files(tmp_path) -> None:
    path = tmp_path / "l.safetensors"
    save_file({"labels": torch.zeros(4, 2)}, str(path))
    with pytest.raises(EvalkitInputError, match="label_names"):
        LabelFile(path)
    save_file({"labels": torch.zeros(4, 2)}, str(path), metadata={"label_names": json.dumps(["a", "b"])})
    acts = tmp_path / "a.npy"
    np.save(acts, np.zeros((10, 8), dtype=np.float32))
    with pytest.raises(EvalkitInputError, match="label rows"):
        list(open_source(activations=acts, labels=path, batch_size=8))


def test_check_d_in() -> None:
    check_d_in(128, 128, "sae")
    with pytest.raises(EvalkitInputError, match="d_in=64.*d_in=128"):
        check_d_in(128, 64, "my_sae/cfg.json", "acts.npy")


def test_relabelled_file_changes_the_fingerprint(tmp_path) -> None:
    acts_path, labels_path = tmp_path / "a.safetensors", tmp_path / "l.safetensors"
    save_file({"activations": _acts()}, str(acts_path))
    meta = {"label_names": json.dumps(["x"])}
    save_file({"labels": torch.zeros(24, 1, dtype=torch.uint8)}, str(labels_path), metadata=meta)
    first = open_source(activations=acts_path, labels=labels_path, batch_size=8).info.fingerprint
    again = open_source(activations=acts_path, labels=labels_path, batch_size=8).info.fingerprint
    save_file({"labels": torch.ones(24, 1, dtype=torch.uint8)}, str(labels_path), metadata=meta)  # same name
    relabelled = open_source(activations=acts_path, labels=labels_path, batch_size=8).info.fingerprint
    assert first == again and relabelled != first
