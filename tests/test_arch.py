"""Tests for mol.arch: detection from config.json checked against the real (tiny) transformers models.

Every family gets a tiny random config (2 layers, hidden 64, 4 heads, vocab 128, intermediate 96 which
is not 4 * hidden), saved alone to a folder; detection must describe the model that transformers
builds from it. Discovery (the generic fallback) must agree with the known-family table.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers as T
from torch import nn
from transformers.models.auto import modeling_auto

from mol._errors import ConfigError, ModelNotFoundError, UnsupportedArchitectureError
from mol.arch import (
    ArchitectureInfo,
    RopeInfo,
    UniversalArchitectureHandler,
    clear_cache,
    detect_architecture,
    discover_architecture,
    resolve_module,
)
from mol.arch._families import KNOWN_FAMILIES

VOCAB, HIDDEN, INTER, LAYERS, HEADS, MAX_POS = 128, 64, 96, 2, 4, 64
THETA = 20000.0


def _rope(**extra: object) -> dict[str, object]:
    return {"rope_type": "default", "rope_theta": THETA, **extra}


def _llama_kwargs(**extra: object) -> dict[str, object]:
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POS,
        rope_parameters=_rope(),
        **extra,
    )


_BERT_KWARGS = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=INTER,
    max_position_embeddings=MAX_POS,
    is_decoder=True,  # BertLMHeadModel / RobertaForCausalLM warn without it
)

# name -> (config factory, expected family, rope theta or None when not rotary)
CASES: dict[str, tuple[Callable[[], T.PretrainedConfig], str, float | None]] = {
    "gpt2": (
        lambda: T.GPT2Config(
            vocab_size=VOCAB,
            n_positions=MAX_POS,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=INTER,
        ),
        "decoder-only",
        None,
    ),
    "gpt_neo": (
        lambda: T.GPTNeoConfig(
            vocab_size=VOCAB,
            max_position_embeddings=MAX_POS,
            hidden_size=HIDDEN,
            num_layers=LAYERS,
            num_heads=HEADS,
            intermediate_size=INTER,
            attention_types=[[["global", "local"], 1]],
            window_size=16,
        ),
        "decoder-only",
        None,
    ),
    "gptj": (
        lambda: T.GPTJConfig(
            vocab_size=VOCAB,
            n_positions=MAX_POS,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=INTER,
            rotary_dim=8,
        ),
        "decoder-only",
        10000.0,  # GPT-J hard-codes its base; the config has no theta
    ),
    "opt": (
        lambda: T.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            ffn_dim=INTER,
            max_position_embeddings=MAX_POS,
            num_attention_heads=HEADS,
            word_embed_proj_dim=HIDDEN,
        ),
        "decoder-only",
        None,
    ),
    "opt_post_ln": (  # OPT-350m style: no final layer norm
        lambda: T.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            ffn_dim=INTER,
            max_position_embeddings=MAX_POS,
            num_attention_heads=HEADS,
            word_embed_proj_dim=HIDDEN,
            do_layer_norm_before=False,
        ),
        "decoder-only",
        None,
    ),
    "bloom": (  # intermediate is always 4 * hidden
        lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS),
        "decoder-only",
        None,
    ),
    "falcon": (  # Falcon-40B style: grouped KV heads, rotary
        lambda: T.FalconConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_kv_heads=2,
            new_decoder_architecture=True,
            ffn_hidden_size=INTER,
            max_position_embeddings=MAX_POS,
            alibi=False,
            rope_parameters=_rope(),
        ),
        "decoder-only",
        THETA,
    ),
    "falcon_alibi": (  # Falcon-7B style multi-query, here with ALiBi instead of rotary
        lambda: T.FalconConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            multi_query=True,
            new_decoder_architecture=False,
            ffn_hidden_size=80,  # 96 would collide with the fused QKV width (4 + 2) * 16
            max_position_embeddings=MAX_POS,
            alibi=True,
        ),
        "decoder-only",
        None,
    ),
    "llama": (lambda: T.LlamaConfig(**_llama_kwargs()), "decoder-only", THETA),
    "mistral": (lambda: T.MistralConfig(**_llama_kwargs()), "decoder-only", THETA),
    "qwen2": (lambda: T.Qwen2Config(**_llama_kwargs()), "decoder-only", THETA),
    "qwen3": (lambda: T.Qwen3Config(**_llama_kwargs(head_dim=32)), "decoder-only", THETA),
    "phi3": (
        lambda: T.Phi3Config(
            **{**_llama_kwargs(pad_token_id=0), "rope_parameters": _rope(partial_rotary_factor=0.5)}
        ),
        "decoder-only",
        THETA,
    ),
    "gemma": (
        lambda: T.GemmaConfig(**{**_llama_kwargs(head_dim=16), "num_key_value_heads": 1}),
        "decoder-only",
        THETA,
    ),
    "gemma2": (
        lambda: T.Gemma2Config(**_llama_kwargs(head_dim=16, sliding_window=16)),
        "decoder-only",
        THETA,
    ),
    "bert": (lambda: T.BertConfig(**_BERT_KWARGS), "encoder-only", None),
    "roberta": (lambda: T.RobertaConfig(**_BERT_KWARGS), "encoder-only", None),
    "distilbert": (
        lambda: T.DistilBertConfig(
            vocab_size=VOCAB,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=INTER,
            max_position_embeddings=MAX_POS,
        ),
        "encoder-only",
        None,
    ),
    "t5": (  # 3 decoder blocks vs 2 encoder blocks: sizes must describe the decoder
        lambda: T.T5Config(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=16,
            d_ff=INTER,
            num_layers=LAYERS,
            num_decoder_layers=3,
            num_heads=HEADS,
        ),
        "encoder-decoder",
        None,
    ),
    "bart": (
        lambda: T.BartConfig(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            encoder_layers=LAYERS,
            decoder_layers=3,
            encoder_attention_heads=HEADS,
            decoder_attention_heads=HEADS,
            encoder_ffn_dim=80,
            decoder_ffn_dim=INTER,
            max_position_embeddings=MAX_POS,
        ),
        "encoder-decoder",
        None,
    ),
    "vit": (
        lambda: T.ViTConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTER,
            image_size=32,
            patch_size=8,
            num_labels=3,
        ),
        "vision",
        None,
    ),
}

# Model types deliberately absent from the table: handled by generic discovery alone.
UNKNOWN_CASES: dict[str, tuple[Callable[[], T.PretrainedConfig], dict[str, object]]] = {
    "gpt_neox": (
        lambda: T.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTER,
            max_position_embeddings=MAX_POS,
            rope_parameters=_rope(partial_rotary_factor=0.25),
        ),
        {
            "architecture_class": "GPTNeoXForCausalLM",
            "layer_path": "gpt_neox.layers",
            "embedding_path": "gpt_neox.embed_in",
            "final_norm_path": "gpt_neox.final_layer_norm",
            "lm_head_path": "lm_head",
            "norm_type": "layernorm",
            "rotary_dim": 4,
        },
    ),
    "starcoder2": (
        lambda: T.Starcoder2Config(**_llama_kwargs()),
        {
            "architecture_class": "Starcoder2ForCausalLM",
            "layer_path": "model.layers",
            "embedding_path": "model.embed_tokens",
            "final_norm_path": "model.norm",
            "lm_head_path": "lm_head",
            "norm_type": "layernorm",
            "rotary_dim": 16,
        },
    ),
}

TABLE_FAMILIES = [
    "gpt2", "gpt_neo", "gptj", "opt", "bloom", "falcon", "llama", "mistral", "qwen2", "qwen3",
    "phi3", "gemma", "gemma2", "bert", "roberta", "distilbert", "t5", "bart", "vit",
]  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny config saved alone (config.json, no weights) to its own folder."""
    dirs = {}
    for name, (factory, *_rest) in {**CASES, **UNKNOWN_CASES}.items():
        folder = tmp_path_factory.mktemp(name)
        factory().save_pretrained(folder)
        dirs[name] = folder
    return dirs


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_cache()


def _linear_dims(layer: nn.Module) -> set[int]:
    """Every dimension of every Linear / transformers Conv1D weight inside ``layer``."""
    dims: set[int] = set()
    for module in layer.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            dims.update(module.weight.shape)
    return dims


def _int_attrs(layer: nn.Module, names: tuple[str, ...]) -> set[int]:
    found = set()
    for module in layer.modules():
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                found.add(value)
    return found


def _check_against_model(info: ArchitectureInfo, config: T.PretrainedConfig) -> None:
    """The detected paths and sizes describe the model transformers builds from ``config``."""
    model = getattr(T, info.architecture_class)(config)
    vision = info.architecture_family == "vision"

    layers = resolve_module(model, info.layer_path)
    assert isinstance(layers, nn.ModuleList)
    assert len(layers) == info.num_layers
    if info.encoder_layer_path is not None:
        encoder = resolve_module(model, info.encoder_layer_path)
        assert isinstance(encoder, nn.ModuleList) and encoder is not layers
        assert len(encoder) == LAYERS  # the test configs give the decoder 3 blocks, the encoder 2

    embedding = resolve_module(model, info.embedding_path)
    if vision:
        assert info.vocab_size is None
        patch_conv = next(m for m in embedding.modules() if isinstance(m, nn.Conv2d))
        assert patch_conv.weight.shape[0] == info.hidden_dim
    else:
        assert info.vocab_size == VOCAB
        assert tuple(embedding.weight.shape) == (info.vocab_size, info.hidden_dim)

    if info.lm_head_path is not None:
        lm_head = resolve_module(model, info.lm_head_path)
        assert lm_head.weight.shape[0] == info.vocab_size
        assert info.tied_embeddings == (lm_head.weight is embedding.weight)
    else:
        assert vision and not info.tied_embeddings

    if info.final_norm_path is not None:
        assert resolve_module(model, info.final_norm_path).weight.numel() == info.hidden_dim

    if info.position_embedding_path is not None:
        if vision:  # a bare nn.Parameter of shape (1, num_patches + 1, D), documented
            assert model.get_parameter(info.position_embedding_path).shape[-1] == info.hidden_dim
        else:
            positions = resolve_module(model, info.position_embedding_path)
            assert (
                isinstance(positions, nn.Embedding) and positions.embedding_dim == info.hidden_dim
            )
            assert positions is not embedding

    first = layers[0]
    dims = _linear_dims(first)
    assert info.intermediate_dim in dims
    assert info.intermediate_dim != 4 * info.hidden_dim or info.architecture_type == "bloom"
    q_width = info.num_heads * info.head_dim
    fused_width = (info.num_heads + 2 * info.num_kv_heads) * info.head_dim
    assert q_width in dims or fused_width in dims
    assert info.num_kv_heads * info.head_dim in dims or fused_width in dims
    head_dims = _int_attrs(
        first, ("head_dim", "head_size", "attention_head_size", "key_value_proj_dim")
    )
    assert head_dims == {info.head_dim}
    rotary_dims = _int_attrs(first, ("rotary_dim", "rotary_ndims"))
    if rotary_dims:  # GPT-J and GPT-NeoX keep the rotated width on the attention module
        assert info.rope is not None and rotary_dims == {info.rope.rotary_dim}
    heads = _int_attrs(first, ("num_heads", "n_heads", "n_head", "num_attention_heads"))
    assert heads <= {info.num_heads}


@pytest.mark.parametrize("name", list(CASES))
def test_detect_known_family_matches_model(name: str, saved: dict[str, Path]) -> None:
    factory, family, theta = CASES[name]
    assert os.listdir(saved[name]) == ["config.json"]  # detection must not need weights
    info = detect_architecture(saved[name])
    config = factory()

    assert info.architecture_type in KNOWN_FAMILIES
    assert info.architecture_family == family
    assert info.name_or_path == os.fspath(saved[name])
    assert info.num_heads == HEADS
    assert info.hidden_dim == HIDDEN
    assert (info.rope is not None) == (theta is not None)
    if theta is not None:
        assert info.rope.theta == theta
        assert info.rope.head_dim == info.head_dim
    assert info.supports_causal_lm == (
        info.architecture_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    json.loads(json.dumps(info.to_dict()))
    _check_against_model(info, config)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt2", dict(position_embedding_path="transformer.wpe", intermediate_dim=INTER, num_layers=2)),
        ("gptj", dict(position_embedding_path=None, intermediate_dim=INTER)),
        ("bloom", dict(intermediate_dim=4 * HIDDEN, max_position_embeddings=None)),
        ("falcon", dict(num_kv_heads=2, intermediate_dim=INTER)),
        ("falcon_alibi", dict(num_kv_heads=1, rope=None, intermediate_dim=80)),
        ("opt", dict(final_norm_path="model.decoder.final_layer_norm", intermediate_dim=INTER)),
        ("opt_post_ln", dict(final_norm_path=None)),
        ("llama", dict(num_kv_heads=2, head_dim=16, norm_type="rmsnorm", tied_embeddings=False)),
        ("qwen3", dict(head_dim=32)),
        ("gemma", dict(num_kv_heads=1, tied_embeddings=True)),
        ("bert", dict(layer_path="bert.encoder.layer", final_norm_path=None, architecture_class="BertLMHeadModel")),
        ("distilbert", dict(layer_path="distilbert.transformer.layer", lm_head_path="vocab_projector")),
        ("t5", dict(num_layers=3, layer_path="decoder.block", encoder_layer_path="encoder.block", embedding_path="shared",
                    final_norm_path="decoder.final_layer_norm", norm_type="rmsnorm", max_position_embeddings=None)),
        ("bart", dict(num_layers=3, layer_path="model.decoder.layers", encoder_layer_path="model.encoder.layers",
                      intermediate_dim=INTER, final_norm_path=None, supports_causal_lm=True)),
        ("vit", dict(layer_path="vit.layers", embedding_path="vit.embeddings.patch_embeddings", lm_head_path=None,
                     final_norm_path="vit.layernorm", supports_causal_lm=False, vocab_size=None)),
    ],
)  # fmt: skip
def test_detect_pins_family_specifics(
    name: str, expected: dict[str, object], saved: dict[str, Path]
) -> None:
    info = detect_architecture(saved[name])
    assert {key: getattr(info, key) for key in expected} == expected


def test_rope_partial_rotary_and_scaling() -> None:
    phi3 = detect_architecture(CASES["phi3"][0]())
    assert phi3.rope == RopeInfo(
        theta=THETA, rope_type="default", head_dim=16, rotary_dim=8, scaling=None
    )
    gptj = detect_architecture(CASES["gptj"][0]())
    assert gptj.rope is not None and gptj.rope.rotary_dim == 8
    scaled = T.LlamaConfig(
        **{**_llama_kwargs(), "rope_parameters": _rope(rope_type="linear", factor=4.0)}
    )
    info = detect_architecture(scaled)
    assert info.rope.rope_type == "linear"
    assert info.rope.scaling == {"factor": 4.0}


def test_table_head_classes_follow_auto_mappings() -> None:
    assert sorted(TABLE_FAMILIES) == sorted(KNOWN_FAMILIES)
    mappings = {
        "causal": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "masked": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        "seq2seq": modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        "image": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    }
    for model_type, spec in KNOWN_FAMILIES.items():
        assert hasattr(T, spec.head_class), model_type
        if spec.family == "encoder-decoder":
            expected = mappings["seq2seq"][model_type]
        elif spec.family == "vision":
            expected = mappings["image"][model_type]
        else:
            expected = mappings["causal"].get(model_type) or mappings["masked"][model_type]
        assert spec.head_class == expected, model_type


@pytest.mark.parametrize("name", [*TABLE_FAMILIES, "falcon_alibi", "opt_post_ln"])
def test_discovery_agrees_with_table(name: str, saved: dict[str, Path]) -> None:
    config = CASES[name][0]()
    table = detect_architecture(saved[name]).to_dict()
    found = discover_architecture(config, name_or_path=os.fspath(saved[name])).to_dict()
    for key in ("layer_path", "embedding_path", "final_norm_path", "lm_head_path"):
        assert found[key] == table[key], key
    assert found == table  # sizes, family, rope, tying and norm type too


@pytest.mark.parametrize("name", list(UNKNOWN_CASES))
def test_unknown_model_type_uses_discovery(name: str, saved: dict[str, Path]) -> None:
    factory, expected = UNKNOWN_CASES[name]
    config = factory()
    assert config.model_type not in KNOWN_FAMILIES
    info = detect_architecture(saved[name])
    assert info.architecture_family == "decoder-only"
    assert info.supports_causal_lm
    assert info.position_embedding_path is None
    assert info.num_layers == LAYERS and info.intermediate_dim == INTER and info.head_dim == 16
    assert info.rope is not None and info.rope.theta == THETA
    assert info.rope.rotary_dim == expected["rotary_dim"]
    for key, value in expected.items():
        if key != "rotary_dim":
            assert getattr(info, key) == value, key
    _check_against_model(info, config)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Hub offline (env var and huggingface_hub's import-time constant); any socket use is refused.

    Both are set because huggingface_hub reads HF_HUB_OFFLINE once, at import, and some of its requests
    (the user-agent registry fetched while building headers) ignore ``local_files_only``.
    """
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_env_offline_read_at_call_time_forces_local_files_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HF_HUB_OFFLINE set after import (huggingface_hub's constant still False) keeps the config local."""
    calls: list[dict[str, object]] = []

    def fake_from_pretrained(name: str, **kwargs: object) -> None:
        calls.append(kwargs)
        raise OSError(f"{name} not in the local cache")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(T.AutoConfig, "from_pretrained", fake_from_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        detect_architecture("mango-tests/not-a-model", revision="v1")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(
        ModelNotFoundError, match="no repository 'mango-tests/not-a-model' at revision 'v1'"
    ):
        detect_architecture("mango-tests/not-a-model", revision="v1")
    assert [call["local_files_only"] for call in calls] == [True, False]
    assert all(call["revision"] == "v1" and call["trust_remote_code"] is False for call in calls)


def test_missing_local_path_raises_with_absolute_path(
    tmp_path: Path, no_network: list[object]
) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as excinfo:
        detect_architecture(missing)
    message = str(excinfo.value)
    assert str(missing.resolve()) in message
    assert "local directory" in message and "hub" in message and "HF_HUB_OFFLINE" in message
    assert isinstance(excinfo.value.__cause__, OSError)
    assert no_network == []


def test_missing_hub_id_offline_makes_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as excinfo:
        detect_architecture("mango-tests/definitely-not-a-model")
    message = str(excinfo.value)
    assert str(tmp_path.resolve() / "mango-tests" / "definitely-not-a-model") in message
    assert "not queried" in message
    assert no_network == []


def test_directory_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="has no config.json") as excinfo:
        detect_architecture(tmp_path)
    assert str(tmp_path.resolve()) in str(excinfo.value)


def test_unknown_model_type_in_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llamma", "hidden_size": 8}))
    with pytest.raises(UnsupportedArchitectureError, match="llamma"):
        detect_architecture(tmp_path)


def test_invalid_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read") as excinfo:
        detect_architecture(tmp_path)
    assert str(tmp_path.resolve() / "config.json") in str(excinfo.value)


def test_cache_returns_same_object_and_sees_edits(tmp_path: Path) -> None:
    CASES["llama"][0]().save_pretrained(tmp_path)
    first = detect_architecture(tmp_path)
    assert detect_architecture(tmp_path) is first
    assert detect_architecture(str(tmp_path)) is first

    config_file = tmp_path / "config.json"
    data = json.loads(config_file.read_text())
    data["num_hidden_layers"] = 5
    before = config_file.stat().st_mtime_ns
    config_file.write_text(json.dumps(data))
    os.utime(config_file, ns=(before + 10**9, before + 10**9))  # coarse-mtime filesystems
    edited = detect_architecture(tmp_path)
    assert edited is not first and edited.num_layers == 5
    assert detect_architecture(tmp_path) is edited

    clear_cache()
    assert detect_architecture(tmp_path) is not edited


def test_cache_key_includes_trust_remote_code(saved: dict[str, Path]) -> None:
    plain = detect_architecture(saved["gpt2"])
    trusted = detect_architecture(saved["gpt2"], trust_remote_code=True)
    assert plain == trusted and plain is not trusted


def test_config_object_is_accepted_and_cached() -> None:
    config = CASES["qwen2"][0]()
    handler = UniversalArchitectureHandler()
    assert handler.load_config(config) is config
    info = handler.detect_architecture(config)
    assert info.architecture_class == "Qwen2ForCausalLM"
    assert handler.detect_architecture(config) is info
    config.num_hidden_layers = 3  # configs are mutable: the key is their content
    assert handler.detect_architecture(config).num_layers == 3


def test_handler_revision_and_trust_warning(
    saved: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mol"):
        handler = UniversalArchitectureHandler(trust_remote_code=True, revision="main")
    assert any("trust_remote_code" in record.getMessage() for record in caplog.records)
    assert handler.load_config(saved["bert"]).model_type == "bert"
    assert handler.detect_architecture(saved["bert"]).architecture_class == "BertLMHeadModel"


def test_resolve_module_errors_name_the_missing_part() -> None:
    model = T.LlamaForCausalLM(CASES["llama"][0]())
    assert resolve_module(model, "model.layers.1") is model.model.layers[1]
    assert resolve_module(model, "") is model
    with pytest.raises(
        UnsupportedArchitectureError, match=r"no child 'layerz'.*did you mean 'layers'"
    ):
        resolve_module(model, "model.layerz")
    with pytest.raises(UnsupportedArchitectureError, match="get_parameter"):
        resolve_module(model, "model.norm.weight")


def test_info_validates_fields() -> None:
    info = detect_architecture(CASES["gpt2"][0]())
    fields = info.to_dict()
    fields.pop("rope")
    with pytest.raises(ValueError, match="architecture_family"):
        ArchitectureInfo(**{**fields, "architecture_family": "decoder_only"}, rope=None)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ArchitectureInfo(**{**fields, "num_kv_heads": 3}, rope=None)
    with pytest.raises(ValueError, match="rotary_dim"):
        RopeInfo(theta=1.0, rope_type="default", head_dim=8, rotary_dim=16)


def test_detection_builds_no_real_tensors(
    saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known families read only the config; discovery builds its model on the meta device."""
    allocated: list[torch.device] = []
    real_empty = torch.empty

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        tensor = real_empty(*args, **kwargs)
        allocated.append(tensor.device)
        return tensor

    monkeypatch.setattr(torch, "empty", spy)
    detect_architecture(saved["gpt_neox"])
    assert allocated and all(device.type == "meta" for device in allocated)


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("llava", dict(architecture_family="multimodal", architecture_class="LlavaForConditionalGeneration",
                       layer_path="model.language_model.layers", embedding_path="model.language_model.embed_tokens",
                       final_norm_path="model.language_model.norm", lm_head_path="lm_head", norm_type="rmsnorm")),
        # CLIP's text and vision stacks are equally long: the one next to the token embedding wins.
        ("clip", dict(architecture_family="multimodal", architecture_class="CLIPModel",
                      layer_path="text_model.encoder.layers", embedding_path="text_model.embeddings.token_embedding",
                      final_norm_path="text_model.final_layer_norm", lm_head_path=None)),
        ("whisper", dict(architecture_family="encoder-decoder", architecture_class="WhisperForConditionalGeneration",
                         layer_path="model.decoder.layers", encoder_layer_path="model.encoder.layers",
                         final_norm_path="model.decoder.layer_norm", lm_head_path="proj_out")),
        ("deit", dict(architecture_family="vision", layer_path="deit.layers",
                      position_embedding_path="deit.embeddings.position_embeddings", final_norm_path="deit.layernorm")),
    ],
)  # fmt: skip
def test_discovery_beyond_text_models(model_type: str, expected: dict[str, object]) -> None:
    """Default (full-size) configs: discovery only builds them on the meta device, so this is cheap."""
    config = T.AutoConfig.for_model(model_type)
    info = discover_architecture(config)
    assert {key: getattr(info, key) for key in expected} == expected
    text = config.get_text_config(decoder=True)
    expected_layers = getattr(text, "decoder_layers", None) or text.num_hidden_layers
    assert info.num_layers == expected_layers
    assert info.hidden_dim == text.hidden_size


def test_per_stage_sizes_are_rejected_by_name() -> None:
    with pytest.raises(
        UnsupportedArchitectureError, match=r"config\.num_attention_heads of model_type 'swin'"
    ):
        discover_architecture(T.AutoConfig.for_model("swin"))
