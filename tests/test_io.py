"""Tests for mol.io: atomic outputs, lazy checkpoints, pickle refusal, loaders, safe save/load."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import struct
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import mol.io._resolve
import mol.io._safe
from mol._errors import (
    CorruptCheckpointError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from mol.io import (
    CheckpointMismatchError,
    LazyCheckpoint,
    atomic_output_dir,
    load_causal_lm,
    load_model_safe,
    load_tokenizer,
    resolve_model_dir,
    save_model_safe,
)

# --------------------------------------------------------------------------- fixtures


def _tiny_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(_tiny_config(**overrides)).eval()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random Llama and its save_pretrained copies: unsharded, sharded, tied."""
    root = tmp_path_factory.mktemp("tiny")
    model = _tiny_llama(seed=0)
    model.save_pretrained(root / "plain")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    tied = _tiny_llama(seed=1, tie_word_embeddings=True)
    tied.save_pretrained(root / "tied")
    return {"model": model, "tied": tied, "root": root}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- atomic_output_dir


def test_atomic_output_dir_moves_content_into_place(tmp_path):
    target = tmp_path / "out"
    with atomic_output_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "a.txt").write_text("hello")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_output_dir_failure_leaves_no_target_and_no_temp(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="midway"), atomic_output_dir(target) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_refuses_existing_non_empty_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"), atomic_output_dir(target):
        pytest.fail("the body must not run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"), atomic_output_dir(tmp_path / "file"):
        pytest.fail("the body must not run")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]


def test_atomic_output_dir_overwrite_replaces_completely(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_output_dir_overwrite_failure_keeps_old_content(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError), atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise ValueError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_output_dir_honours_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


# --------------------------------------------------------------------------- LazyCheckpoint


@pytest.mark.parametrize("layout", ["plain", "sharded"])
def test_lazy_checkpoint_matches_state_dict_exactly(tiny, layout):
    model_dir = tiny["root"] / layout
    state = tiny["model"].state_dict()
    shards = sorted(model_dir.glob("*.safetensors"))
    if layout == "plain":
        assert [p.name for p in shards] == ["model.safetensors"]
    else:
        assert len(shards) > 1 and (model_dir / "model.safetensors.index.json").is_file()

    with LazyCheckpoint(model_dir) as ckpt:
        assert ckpt.keys() == sorted(state)  # untied: save_pretrained writes every key
        assert len(ckpt) == len(state)
        for name, expected in state.items():
            assert name in ckpt
            assert ckpt.shape(name) == tuple(expected.shape)
            assert ckpt.dtype(name) == expected.dtype
            assert ckpt.file_of(name).parent == model_dir.resolve()
            assert torch.equal(ckpt.get_tensor(name), expected), name
        assert {ckpt.file_of(n) for n in state} == {p.resolve() for p in shards}
        assert ckpt.metadata()["format"] == "pt"
        assert "nonexistent" not in ckpt


def test_lazy_checkpoint_tied_model_omits_the_tied_head(tiny):
    state = tiny["tied"].state_dict()
    with LazyCheckpoint(tiny["root"] / "tied") as ckpt:
        # save_pretrained drops lm_head.weight when it is tied to the embeddings.
        assert ckpt.keys() == sorted(set(state) - {"lm_head.weight"})
        assert torch.equal(ckpt.get_tensor("model.embed_tokens.weight"), state["lm_head.weight"])


def test_lazy_checkpoint_get_slice_reads_part(tiny):
    name = "model.embed_tokens.weight"
    expected = tiny["model"].state_dict()[name]
    with LazyCheckpoint(tiny["root"] / "sharded") as ckpt:
        part = ckpt.get_slice(name)
        assert list(part.get_shape()) == list(expected.shape)
        assert torch.equal(part[3:7, :5], expected[3:7, :5])


def test_lazy_checkpoint_reopens_after_close(tiny):
    ckpt = LazyCheckpoint(tiny["root"] / "plain")
    first = ckpt.get_tensor("model.norm.weight")
    ckpt.close()
    assert torch.equal(ckpt.get_tensor("model.norm.weight"), first)
    ckpt.close()


def test_lazy_checkpoint_unknown_tensor_names_it_and_hints(tiny):
    model_dir = tiny["root"] / "plain"
    ckpt = LazyCheckpoint(model_dir)
    with pytest.raises(KeyError) as info:
        ckpt.get_tensor("model.norm.weigth")
    message = str(info.value)
    assert "model.norm.weigth" in message and str(model_dir.resolve()) in message
    assert "did you mean 'model.norm.weight'" in message


def test_lazy_checkpoint_truncated_file_is_corrupt(tiny, tmp_path):
    model_dir = _copy(tiny["root"] / "plain", tmp_path / "m")
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-7])
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        LazyCheckpoint(model_dir)
    assert str(weights.resolve()) in str(info.value)


def test_lazy_checkpoint_garbage_header_is_corrupt(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a header")
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        LazyCheckpoint(tmp_path)
    body = b"{not json}"
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        LazyCheckpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CorruptCheckpointError, match="too short"):
        LazyCheckpoint(tmp_path)


def test_lazy_checkpoint_index_with_missing_shard_is_corrupt(tiny, tmp_path):
    model_dir = _copy(tiny["root"] / "sharded", tmp_path / "m")
    missing = sorted(model_dir.glob("model-*.safetensors"))[-1]
    missing.unlink()
    with pytest.raises(CorruptCheckpointError) as info:
        LazyCheckpoint(model_dir)
    message = str(info.value)
    assert "model.safetensors.index.json" in message and missing.name in message


def test_lazy_checkpoint_index_naming_absent_tensor_is_corrupt(tiny, tmp_path):
    model_dir = _copy(tiny["root"] / "sharded", tmp_path / "m")
    index = model_dir / "model.safetensors.index.json"
    text = index.read_text()
    shard = sorted(model_dir.glob("model-*.safetensors"))[0].name
    index.write_text(
        text.replace('"weight_map": {', f'"weight_map": {{"ghost.weight": "{shard}", ')
    )
    with pytest.raises(CorruptCheckpointError) as info:
        LazyCheckpoint(model_dir)
    message = str(info.value)
    assert "ghost.weight" in message and shard in message and "index" in message


def test_lazy_checkpoint_without_weights_lists_the_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no weights") as info:
        LazyCheckpoint(tmp_path)
    assert "config.json" in str(info.value)
    with pytest.raises(ModelNotFoundError):
        LazyCheckpoint(tmp_path / "absent")


# --------------------------------------------------------------------------- pickle


class NotATensor:
    """A class instance that weights_only unpickling must refuse."""


@pytest.fixture()
def bin_dir(tiny, tmp_path):
    model_dir = tmp_path / "bin"
    model_dir.mkdir()
    torch.save(tiny["model"].state_dict(), model_dir / "pytorch_model.bin")
    return model_dir


def test_pickle_refused_by_default(bin_dir):
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True") as info:
        LazyCheckpoint(bin_dir)
    assert "pytorch_model.bin" in str(info.value)


def test_pickle_allowed_gives_equal_tensors(tiny, bin_dir):
    state = tiny["model"].state_dict()
    with LazyCheckpoint(bin_dir, allow_pickle=True) as ckpt:
        assert ckpt.keys() == sorted(state)
        for name, expected in state.items():
            assert ckpt.shape(name) == tuple(expected.shape)
            assert ckpt.dtype(name) == expected.dtype
            assert torch.equal(ckpt.get_tensor(name), expected)
        assert torch.equal(ckpt.get_slice("lm_head.weight")[:2], state["lm_head.weight"][:2])


def test_pickle_sharded_index_is_followed(tiny, tmp_path):
    state = tiny["model"].state_dict()
    names = sorted(state)
    halves = {"pytorch_model-1.bin": names[:5], "pytorch_model-2.bin": names[5:]}
    weight_map = {}
    for file, part in halves.items():
        torch.save({n: state[n] for n in part}, tmp_path / file)
        weight_map.update(dict.fromkeys(part, file))
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with LazyCheckpoint(tmp_path, allow_pickle=True) as ckpt:
        assert ckpt.keys() == names
        assert ckpt.file_of(names[0]).name == "pytorch_model-1.bin"
        assert all(torch.equal(ckpt.get_tensor(n), state[n]) for n in names)


def test_pickle_with_objects_refused_even_when_allowed(tmp_path):
    torch.save({"w": torch.ones(2), "evil": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="other than tensors") as info:
        LazyCheckpoint(tmp_path, allow_pickle=True)
    assert "pytorch_model.bin" in str(info.value) and "NotATensor" in str(info.value)


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("layout", ["plain", "sharded"])
def test_load_causal_lm_gives_identical_logits(tiny, layout):
    ids = torch.tensor([[1, 5, 9, 77, 3, 100]])
    with torch.no_grad():
        expected = tiny["model"](ids).logits
        loaded = load_causal_lm(tiny["root"] / layout)
        assert not loaded.training
        assert torch.equal(loaded(ids).logits, expected)


def test_load_causal_lm_dtype_and_remote_code_warning(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mol"):
        loaded = load_causal_lm(
            str(tiny["root"] / "plain"), dtype=torch.bfloat16, trust_remote_code=True
        )
    assert loaded.dtype == torch.bfloat16
    assert any("trust_remote_code" in r.getMessage() for r in caplog.records if r.name == "mol")


def test_load_causal_lm_refuses_bin_before_transformers(bin_dir, monkeypatch):
    import transformers

    def fail(*args, **kwargs):
        raise AssertionError("transformers must not be called for a refused checkpoint")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        load_causal_lm(bin_dir)


def test_load_causal_lm_bin_allowed_gives_identical_logits(tiny, bin_dir):
    (bin_dir / "config.json").write_text(tiny["model"].config.to_json_string())
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        loaded = load_causal_lm(bin_dir, allow_pickle=True)
        assert torch.equal(loaded(ids).logits, tiny["model"](ids).logits)


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("set_after_import", [False, True])
def test_missing_model_offline_names_path_and_offline(
    tmp_path, monkeypatch, no_network, set_after_import
):
    # set_after_import: only the environment says offline, as when HF_HUB_OFFLINE is set after
    # huggingface_hub read it; mol must read it at call time.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", not set_after_import)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        load_causal_lm("nobody/no-such-model")
    message = str(info.value)
    assert str(tmp_path / "nobody" / "no-such-model") in message
    assert "offline" in message and "nobody/no-such-model" in message


def test_missing_model_online_reports_the_hub_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise LocalEntryNotFoundError("connection refused by test")

    monkeypatch.setattr(mol.io._resolve, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_dir("org/model", revision="v1")
    message = str(info.value)
    assert str(tmp_path / "org" / "model") in message
    assert "Hugging Face Hub" in message and "connection refused by test" in message
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError)
    ((repo_id, kwargs),) = calls
    assert repo_id == "org/model" and kwargs["revision"] == "v1"
    assert kwargs["local_files_only"] is False
    assert "*.safetensors" in kwargs["allow_patterns"] and "*.bin" not in kwargs["allow_patterns"]


def test_invalid_repo_id_gives_local_message_only(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the hub must not be asked about a path")

    monkeypatch.setattr(mol.io._resolve, "snapshot_download", fail)
    for name in ["./missing", str(tmp_path / "absent"), "a/b/c"]:
        with pytest.raises(ModelNotFoundError) as info:
            resolve_model_dir(name)
        message = str(info.value)
        assert str(Path(name).absolute()) in message and "hub" not in message.lower()


def test_resolve_local_dir_is_absolute(tiny, monkeypatch):
    monkeypatch.chdir(tiny["root"])
    resolved = resolve_model_dir("plain")
    assert resolved.is_absolute() and resolved == (tiny["root"] / "plain").resolve()


def test_load_tokenizer_round_trips_and_requires_files(tiny, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(
        tmp_path / "tok"
    )
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer("hello world nope")["input_ids"] == [1, 2, 0]
    with pytest.raises(ModelNotFoundError, match="no tokenizer") as info:
        load_tokenizer(tiny["root"] / "plain")
    assert "config.json" in str(info.value)


# --------------------------------------------------------------------------- save/load safe

METADATA = {"version": "1.0", "step": 7, "lr": 1.5e-4, "tags": ["a", 2, None, True],
            "nested": {"layers": [0, 1], "empty": {}, "ü": "ß"}}  # fmt: skip


def test_save_load_safe_round_trip_into_fresh_model(tmp_path):
    source = _tiny_llama(seed=0)
    fresh = _tiny_llama(seed=123)
    assert not torch.equal(fresh.lm_head.weight, source.lm_head.weight)

    written = save_model_safe(source, tmp_path / "model", metadata=METADATA)
    assert written == tmp_path / "model" / "model.safetensors"
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.safetensors"]
    metadata = load_model_safe(fresh, tmp_path / "model")
    assert metadata == METADATA
    for name, tensor in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    with LazyCheckpoint(tmp_path / "model") as ckpt:
        assert ckpt.metadata()["format"] == "pt"


def test_save_load_safe_file_path_and_no_metadata(tmp_path):
    source, fresh = _tiny_llama(seed=0), _tiny_llama(seed=5)
    target = tmp_path / "deep" / "weights.safetensors"
    assert save_model_safe(source, target) == target
    assert load_model_safe(fresh, target) == {}
    assert torch.equal(fresh.model.norm.weight, source.model.norm.weight)
    assert torch.equal(fresh.lm_head.weight, source.lm_head.weight)
    with LazyCheckpoint(target) as ckpt:  # a single file works as well as a directory
        assert ckpt.keys() == sorted(source.state_dict())
        assert ckpt.file_of("lm_head.weight") == target


def test_save_load_safe_tied_weights(tmp_path):
    source = _tiny_llama(seed=0, tie_word_embeddings=True)
    fresh = _tiny_llama(seed=9, tie_word_embeddings=True)
    save_model_safe(source, tmp_path, metadata={"tied": True})
    with LazyCheckpoint(tmp_path) as ckpt:
        assert len(ckpt) == len(source.state_dict()) - 1  # the shared tensor is written once
    assert load_model_safe(fresh, tmp_path) == {"tied": True}
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert torch.equal(fresh.lm_head.weight, source.lm_head.weight)


def test_load_safe_strict_mismatch_names_keys(tmp_path):
    save_model_safe(_tiny_llama(seed=0), tmp_path)
    deeper = _tiny_llama(seed=0, num_hidden_layers=3)
    with pytest.raises(CheckpointMismatchError, match="missing keys") as info:
        load_model_safe(deeper, tmp_path)
    assert "model.layers.2.self_attn.q_proj.weight" in str(info.value)

    shallower = _tiny_llama(seed=0, num_hidden_layers=1)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys") as info:
        load_model_safe(shallower, tmp_path)
    assert "model.layers.1.mlp.up_proj.weight" in str(info.value)
    load_model_safe(shallower, tmp_path, strict=False)  # tolerated when not strict

    wider = _tiny_llama(seed=0, vocab_size=130)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch") as info:
        load_model_safe(wider, tmp_path, strict=False)
    assert "model.embed_tokens.weight: file (128, 32) vs model (130, 32)" in str(info.value)


@pytest.mark.parametrize(
    ("metadata", "where"),
    [({"a": (1, 2)}, "tuple"), ({"a": {1: "x"}}, "key 1"), ({"a": float("nan")}, "nan"),
     ({"a": [object()]}, r"metadata\['a'\]\[0\]"), (["not", "a", "dict"], "must be a dict")],
)  # fmt: skip
def test_save_safe_refuses_metadata_json_would_change(tmp_path, metadata, where):
    with pytest.raises(TypeError, match=where):
        save_model_safe(torch.nn.Linear(2, 2), tmp_path / "m.safetensors", metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def test_save_safe_failure_keeps_old_file(tmp_path, monkeypatch):
    target = save_model_safe(torch.nn.Linear(2, 2), tmp_path, metadata={"v": 1})
    before = target.read_bytes()

    def crash(model, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(mol.io._safe, "save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model_safe(torch.nn.Linear(2, 2), tmp_path, metadata={"v": 2})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_load_safe_foreign_and_corrupt_files(tmp_path):
    linear = torch.nn.Linear(2, 2)
    save_file(dict(linear.state_dict()), tmp_path / "foreign.safetensors", {"who": "else"})
    assert load_model_safe(linear, tmp_path / "foreign.safetensors") == {"who": "else"}
    data = (tmp_path / "foreign.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-1])
    with pytest.raises(CorruptCheckpointError, match="cut.safetensors"):
        load_model_safe(linear, tmp_path / "cut.safetensors")
    with pytest.raises(ModelNotFoundError, match="absent"):
        load_model_safe(linear, tmp_path / "absent")
