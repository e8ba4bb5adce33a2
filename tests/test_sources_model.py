"""Model-backed sources on the small world: agreement with activation files, masking, labels, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from evalkit.core.errors import EvalkitInputError
from evalkit.sources import text as text_module
from evalkit.sources.factory import open_source
from evalkit.sources.models import ModelSource
from evalkit.world.build import build_world
from evalkit.world.corpus import BIT, CONCEPTS
from evalkit.world.words import COLOURS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.getbasetemp() / "world-cache", size="small")


def _model_source(world, **kw) -> ModelSource:
    return open_source(
        model=str(world.model_dir),
        hook=world.hook_name,
        dataset=str(world.eval_text_path),
        seq_len=world.seq_len,
        **kw,
    )


def test_model_path_equals_activation_file_path(world, tmp_path) -> None:
    source = _model_source(world, batch_size=world.seq_len * 8)
    batches = list(source)
    acts = torch.cat([b.acts_BSD for b in batches])
    tokens = torch.cat([b.tokens_BS for b in batches])
    assert acts.shape == (32, world.seq_len, world.d_model)  # the whole eval split, BOS + 31 words per row
    path = tmp_path / "acts.safetensors"
    save_file({"activations": acts, "tokens": tokens}, str(path))
    from_file = list(open_source(activations=path, batch_size=world.seq_len * 8))
    assert torch.equal(torch.cat([b.acts_BSD for b in from_file]), acts)
    assert torch.equal(torch.cat([b.special_BS for b in from_file]), torch.cat([b.special_BS for b in batches]))
    # and the stored corpus tokens are exactly what tokenizing eval.txt gives back
    from safetensors import safe_open

    with safe_open(str(world.corpus_path), framework="pt") as fh:
        start, stop = json.loads(fh.metadata()["corpus"])["splits"]["eval"]
        assert torch.equal(fh.get_slice("tokens")[start:stop], tokens)


def test_special_tokens_masked_and_handle_exposed(world) -> None:
    source = _model_source(world, n_tokens=world.seq_len * 3)
    batch = next(iter(source))
    bos = source.model.tokenizer.bos_token_id
    assert (batch.tokens_BS[:, 0] == bos).all()
    assert torch.equal(batch.special_BS, batch.tokens_BS == bos)
    assert source.hook_name == world.hook_name and source.layer == int(world.hook_name.split(".")[1])
    assert source.d_in == world.d_model
    assert sum(b.n_tokens for b in source) == world.seq_len * 3
    assert next(source.token_batches()).shape[1] == world.seq_len
    details = source.info.as_dict()
    assert details["name"] == "model" and details["fingerprint"].startswith("model:")


def test_world_source_labels(world) -> None:
    source = open_source(world=world, batch_size=world.seq_len * 10)
    batches = list(source)
    assert sum(len(b.acts_BSD) for b in batches) == 32
    vocab = source.model.tokenizer.convert_ids_to_tokens(list(range(len(source.model.tokenizer))))
    colour_ids = torch.tensor([vocab.index(c) for c in COLOURS])
    for b in batches:
        assert b.label_names == CONCEPTS
        col = CONCEPTS.index("colour")
        assert torch.equal(b.labels_BSL[..., col], torch.isin(b.tokens_BS, colour_ids))
        assert not b.labels_BSL[:, 0].any() and b.special_BS[:, 0].all()
    # more tokens than the stored eval split: fresh sequences are generated, deterministically
    more = open_source(world=world, n_tokens=world.seq_len * 40, batch_size=world.seq_len * 16)
    first = [b.tokens_BS for b in more]
    assert sum(len(t) for t in first) == 40
    assert torch.equal(torch.cat(first), torch.cat([b.tokens_BS for b in more]))
    assert BIT["colour"] == 1 << col


def test_model_source_streams_lazily(world, tmp_path, monkeypatch) -> None:
    lines = world.eval_text_path.read_text().splitlines()
    big = tmp_path / "big.txt"
    big.write_text("\n".join(lines * 50) + "\n")  # 1600 documents
    read: list[int] = []
    original = text_module._iter_txt

    def counting(path, text_column=None):
        for doc in original(path, text_column):
            read.append(1)
            yield doc

    monkeypatch.setattr(text_module, "_iter_txt", counting)
    source = open_source(
        model=str(world.model_dir),
        hook=world.hook_name,
        dataset=str(big),
        seq_len=world.seq_len,
        batch_size=world.seq_len * 4,
    )
    it = iter(source)
    next(it)
    assert len(read) <= 5  # one batch of 4 rows needs about 4 documents, not the whole file


def test_jsonl_and_parquet_datasets(world, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = world.eval_text_path.read_text().splitlines()[:4]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in lines))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": lines}), parquet)
    txt = tmp_path / "d.txt"
    txt.write_text("\n".join(lines))
    got = [
        torch.cat(
            [
                b.acts_BSD
                for b in open_source(
                    model=str(world.model_dir), hook=world.hook_name, dataset=str(p), seq_len=world.seq_len
                )
            ]
        )
        for p in (jsonl, parquet, txt)
    ]
    assert got[0].shape[0] == 4
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])


def test_bad_model_inputs(world, tmp_path) -> None:
    with pytest.raises(EvalkitInputError, match="did you mean.*hook_resid_post"):
        _model_source(world.__class__(**{**world.__dict__, "hook_name": "blocks.1.hook_resid_pots"}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(EvalkitInputError, match="empty") as exc:
        list(open_source(model=str(world.model_dir), hook=world.hook_name, dataset=str(empty)))
    assert str(empty) in str(exc.value)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text("{not json\n")
    with pytest.raises(EvalkitInputError, match="line 1"):
        list(open_source(model=str(world.model_dir), hook=world.hook_name, dataset=str(bad_json)))
    with pytest.raises(EvalkitInputError, match="not found"):
        list(open_source(model=str(world.model_dir), hook=world.hook_name, dataset=str(tmp_path / "nope.txt")))
    with pytest.raises(EvalkitInputError, match="not a model folder"):
        open_source(model=str(tmp_path), hook=world.hook_name, dataset=str(empty))
    with pytest.raises(EvalkitInputError, match="--dataset"):
        open_source(model=str(world.model_dir), hook=world.hook_name)
    with pytest.raises(EvalkitInputError, match="dtype"):
        open_source(model=str(world.model_dir), hook=world.hook_name, dataset=str(empty), dtype="float33")


def test_world_labels_file_matches_world_source(world) -> None:
    labelled = open_source(
        model=str(world.model_dir),
        hook=world.hook_name,
        dataset=str(world.eval_text_path),
        seq_len=world.seq_len,
        labels=world.labels_path,
    )
    direct = open_source(world=world)
    for a, b in zip(labelled, direct, strict=True):
        assert a.label_names == b.label_names == CONCEPTS
        assert torch.equal(a.labels_BSL, b.labels_BSL)
        assert torch.equal(a.acts_BSD, b.acts_BSD)
    assert labelled.hook_name == world.hook_name  # the runner's handle survives the labels wrapper


def test_seq_len_is_clamped_to_n_ctx_unless_asked_for(world) -> None:
    n_ctx = world.seq_len  # the small world's model has n_ctx 32, below DEFAULT_SEQ_LEN (128)
    assert n_ctx < 128
    plain = open_source(model=str(world.model_dir), hook=world.hook_name, dataset=str(world.eval_text_path))
    batch = next(iter(plain))
    assert batch.tokens_BS.shape[1] == n_ctx  # unset: 128 clamped to n_ctx instead of crashing in the model
    assert plain.info.details["seq_len"] == n_ctx
    shorter = _model_source(world.__class__(**{**world.__dict__, "seq_len": 16}))
    assert next(iter(shorter)).tokens_BS.shape[1] == 16
    with pytest.raises(EvalkitInputError, match=f"n_ctx={n_ctx}") as exc:
        _model_source(world.__class__(**{**world.__dict__, "seq_len": n_ctx + 1}))
    assert "--seq-len" in str(exc.value)


def test_dtype_applies_to_model_activations(world) -> None:
    reference = next(iter(_model_source(world, n_tokens=world.seq_len * 2)))
    for name, torch_dtype in (("float64", torch.float64), ("bfloat16", torch.bfloat16)):
        source = _model_source(world, n_tokens=world.seq_len * 2, dtype=name)
        acts = next(iter(source)).acts_BSD
        assert acts.dtype == torch_dtype
        torch.testing.assert_close(acts.float(), reference.acts_BSD, rtol=0.1, atol=0.1 * acts.abs().max())
    world_acts = next(iter(open_source(world=world, n_tokens=world.seq_len, dtype="float64"))).acts_BSD
    assert world_acts.dtype == torch.float64
    assert open_source(world=world, dtype="float64").info.fingerprint != open_source(world=world).info.fingerprint
