"""The MoL runtime's forward pass: oracles against the source models, causality, routing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mol._errors import ConfigError, UnsupportedArchitectureError
from mol.fusion import MoLConfig, MoLRuntime

from .merge_fixtures import gpt2_config, llama_config, save_random


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(4)
    mistral = MistralForCausalLM(
        MistralConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=96,
        )
    )
    mistral.save_pretrained(root / "mistral")
    return {
        "llama": str(save_random(root / "llama", llama_config(num_hidden_layers=3), 1)),
        "gpt2": str(save_random(root / "gpt2", gpt2_config(n_layer=3), 2)),
        "wide-llama": str(
            save_random(
                root / "wide",
                llama_config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2),
                3,
            )
        ),
        "mistral": str(root / "mistral"),
    }


def _single(path, **config):
    runtime = MoLRuntime(MoLConfig(models=[path], **config))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    n = runtime.infos[path].num_layers
    for i in range(n):
        runtime.add_layer([(path, i)], layer_idx=i)
    return runtime.eval()


IDS = torch.tensor([[0, 0, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral"])
@pytest.mark.parametrize("router", ["simple", "token_level"])
def test_one_model_with_all_its_layers_reproduces_its_logits(sources, family, router):
    path = sources[family]
    runtime = _single(path, router_type=router)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        want = reference(IDS, attention_mask=MASK).logits
        got = runtime.compute_logits(IDS, MASK)
    real = MASK.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)


def test_heterogeneous_fusion_is_causal_and_routes(sources):
    primary, partner = sources["gpt2"], sources["wide-llama"]
    for router in ("simple", "token_level"):
        runtime = MoLRuntime(MoLConfig(models=[primary, partner], router_type=router))
        runtime.setup_embeddings()
        runtime.setup_lm_head()
        for i in range(2):
            runtime.add_layer([(primary, i), (partner, i)], layer_idx=i)
        runtime.eval()
        assert runtime.target_hidden_dim == 32
        assert runtime.layers[0].in_adapters[1].out_dim == 48
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        changed = ids.clone()
        changed[0, 3:] = torch.tensor([30, 31])
        with torch.no_grad():
            a = runtime.compute_logits(ids)
            b = runtime.compute_logits(changed)
            hidden, stats = runtime.forward(ids, return_router_stats=True)
        assert torch.equal(a[:, :3], b[:, :3])
        assert not torch.equal(a[:, 3:], b[:, 3:])
        assert set(stats) == {0, 1}
        torch.testing.assert_close(stats[0]["expert_weights"].sum(), torch.tensor(1.0))
        assert stats[0]["token_weights"].shape == (1, 5, 2)
        assert hidden.shape == (1, 5, 32)


def test_trainable_parts_are_adapters_and_routers_only(sources):
    path = sources["llama"]
    runtime = _single(path)
    trainable = {n for n, p in runtime.named_parameters() if p.requires_grad}
    assert trainable and all(
        ("adapter" in n or "router" in n or n.startswith(("embed_in", "head_out")))
        for n in trainable
    )
    logits = runtime.train().compute_logits(IDS, MASK)
    logits.float().pow(2).mean().backward()
    assert runtime.layers[0].router.gate.weight.grad is not None


def test_bad_requests_are_clear_errors(sources):
    path = sources["llama"]
    runtime = MoLRuntime(MoLConfig(models=[path], max_layers=1))
    with pytest.raises(UnsupportedArchitectureError, match=r"has 3 layers \(0..2\); layer 7"):
        runtime.add_layer([(path, 7)])
    with pytest.raises(ConfigError, match="is not in MoLConfig.models"):
        runtime.add_layer([("elsewhere", 0)])
    runtime.add_layer([(path, 0)])
    with pytest.raises(ConfigError, match="max_layers is 1"):
        runtime.add_layer([(path, 1)])
    with pytest.raises(ConfigError, match="adapter_type"):
        MoLConfig(models=[path], adapter_type="conv")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_single_model_runtime_generates_what_the_model_generates(sources, family):
    path = sources[family]
    runtime = _single(path)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    want = reference.generate(input_ids=ids, attention_mask=mask, **kwargs)
    got = runtime.generate(ids, attention_mask=mask, **kwargs)
    assert torch.equal(got, want)


@pytest.mark.parametrize("router", ["simple", "token_level"])
def test_cached_generation_equals_uncached_generation(sources, router):
    primary, partner = sources["gpt2"], sources["wide-llama"]
    runtime = MoLRuntime(MoLConfig(models=[primary, partner], router_type=router))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(2):
        runtime.add_layer([(primary, i), (partner, i)], layer_idx=i)
    torch.manual_seed(0)
    for layer in runtime.layers:  # decisive routers, so a wrong pooling state would show
        layer.router.gate.weight.data.normal_(std=2.0)
    runtime.eval()
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    cached = runtime.generate(ids, attention_mask=mask, use_cache=True, **kwargs)
    uncached = runtime.generate(ids, attention_mask=mask, use_cache=False, **kwargs)
    assert cached.shape == (2, 14)
    assert torch.equal(cached, uncached)
    sampled = runtime.generate(
        ids,
        attention_mask=mask,
        do_sample=True,
        top_p=0.9,
        temperature=0.8,
        max_new_tokens=5,
        no_repeat_ngram_size=2,
        pad_token_id=0,
    )
    assert sampled.shape == (2, 9)


def _fused(sources, router="simple"):
    primary, partner = sources["gpt2"], sources["wide-llama"]
    runtime = MoLRuntime(
        MoLConfig(
            models=[primary, partner],
            router_type=router,
            adapter_type="bottleneck",
            bottleneck_dim=8,
        )
    )
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(2):
        runtime.add_layer([(primary, i), (partner, i)], layer_idx=i)
    torch.manual_seed(3)
    with torch.no_grad():  # "train": move every trainable weight off its initial value
        for p in runtime.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return runtime.eval()


def test_checkpoint_round_trip_gives_identical_logits(sources, tmp_path):
    runtime = _fused(sources)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        want = runtime.compute_logits(ids)
    path = runtime.save_checkpoint(tmp_path / "ckpt")
    from safetensors import safe_open

    with safe_open(path / "trainable.safetensors", framework="pt") as f:
        names = list(f.keys())
    assert names and all("block" not in n and "embed_tokens" not in n for n in names)
    loaded = MoLRuntime.load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded.compute_logits(ids), want)


def test_checkpoint_refuses_changed_sources_unless_told(sources, tmp_path):
    import shutil

    partner = tmp_path / "partner"
    shutil.copytree(sources["wide-llama"], partner)
    runtime = MoLRuntime(MoLConfig(models=[sources["gpt2"], str(partner)]))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    runtime.add_layer([(sources["gpt2"], 0), (str(partner), 1)])
    path = runtime.save_checkpoint(tmp_path / "ckpt")
    save_random(
        partner, llama_config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2), seed=99
    )  # the source changes
    from mol._errors import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match=r"layer0/.*partner:1"):
        MoLRuntime.load_checkpoint(path)
    MoLRuntime.load_checkpoint(path, allow_changed_sources=True)


def test_self_contained_checkpoint_needs_no_sources(sources, tmp_path):
    import shutil

    primary, partner = tmp_path / "p", tmp_path / "q"
    shutil.copytree(sources["gpt2"], primary)
    shutil.copytree(sources["llama"], partner)
    runtime = MoLRuntime(MoLConfig(models=[str(primary), str(partner)], router_type="token_level"))
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    runtime.add_layer([(str(primary), 0), (str(partner), 2)])
    runtime.eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = runtime.compute_logits(ids)
    path = runtime.save_checkpoint(tmp_path / "ckpt", include_experts=True)
    shutil.rmtree(primary)
    shutil.rmtree(partner)
    loaded = MoLRuntime.load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded.compute_logits(ids), want)


def test_transformers_api_round_trip(sources, tmp_path):
    runtime = _fused(sources, router="token_level")
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        want = runtime.compute_logits(ids)
    runtime.as_hf_model().save_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    from mol.fusion import MoLForCausalLM

    assert isinstance(model, MoLForCausalLM)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(5)
    model = BertForMaskedLM(
        BertConfig(
            hidden_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=56,
            vocab_size=96,
        )
    )
    path = tmp_path_factory.mktemp("bert") / "bert"
    model.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("router", ["simple", "token_level"])
@pytest.mark.parametrize("top_k", [None, 1])
def test_every_family_stays_causal_inside_the_stack(sources, bert, router, top_k):
    primary = sources["gpt2"]
    partners = [sources["llama"], sources["mistral"], bert]
    runtime = MoLRuntime(
        MoLConfig(models=[primary, *partners], router_type=router, top_k_experts=top_k)
    )
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(2):
        runtime.add_layer([(primary, i), *[(p, i) for p in partners]], layer_idx=i)
    torch.manual_seed(0)
    for layer in runtime.layers:
        layer.router.gate.weight.data.normal_(std=1.0)
    runtime.eval()
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        base = runtime.compute_logits(ids)
        for t in range(ids.shape[1] - 1):
            changed = ids.clone()
            changed[0, t + 1] = 50
            out = runtime.compute_logits(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"position <= {t} changed"
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(
        runtime.generate(ids, use_cache=True, **kwargs),
        runtime.generate(ids, use_cache=False, **kwargs),
    )


def test_unsupported_families_are_named(sources, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(
        T5Config(d_model=32, d_ff=48, num_layers=1, num_heads=4, vocab_size=96, d_kv=8)
    ).save_pretrained(tmp_path / "t5")
    runtime = MoLRuntime(MoLConfig(models=[sources["gpt2"], str(tmp_path / "t5")]))
    with pytest.raises(
        UnsupportedArchitectureError, match=r"t5 \(encoder-decoder\) blocks cannot be fused"
    ):
        runtime.add_layer([(str(tmp_path / "t5"), 0)])
    with pytest.raises(UnsupportedArchitectureError, match="primary model must be a decoder-only"):
        MoLRuntime(MoLConfig(models=[str(tmp_path / "t5")]))


def test_sparse_top1_runs_only_the_chosen_blocks_and_matches_dense(sources):
    primary, partner = sources["gpt2"], sources["wide-llama"]
    runtime = MoLRuntime(
        MoLConfig(
            models=[primary, partner], router_type="simple", pooling_type="last", top_k_experts=1
        )
    )
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    runtime.add_layer([(primary, 0), (partner, 0)])
    layer = runtime.layers[0].eval()
    calls = {0: [], 1: []}
    for i, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda m, a, o, i=i: calls[i].append(a[0].shape[0]))
    # force a decision per row: row 0 -> expert 0, row 1 -> expert 1 (every position)
    with torch.no_grad():
        layer.router.gate.weight.zero_()
        layer.router.gate.bias.zero_()
    hidden = torch.randn(2, 4, 32)
    mask = torch.ones(2, 4, dtype=torch.long)
    pos = torch.arange(4)[None]
    from mol.fusion.routers import RouterOutput

    weights = torch.zeros(2, 4, 2)
    weights[0, :, 0] = 1
    weights[1, :, 1] = 1
    layer.router.forward = lambda h, m, s=None: RouterOutput(weights, weights, weights, m.bool())
    with torch.no_grad():
        sparse, _ = layer(hidden, mask, pos)
    assert calls == {0: [1], 1: [1]}  # each block ran on its one row
    with torch.no_grad():  # the dense computation, expert by expert, gives the same
        dense = hidden.clone()
        for i in range(2):
            x = layer.in_adapters[i](hidden)
            y = layer.experts[i](x, mask, pos)
            dense = dense + weights[..., i : i + 1] * layer.out_adapters[i](y - x)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-6)


def test_partner_with_another_tokenizer_warns(sources, tmp_path, caplog):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def tok(words, path):
        t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
        t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(tokenizer_object=t, unk_token=words[0]).save_pretrained(path)

    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(sources["gpt2"], a)
    shutil.copytree(sources["llama"], b)
    tok([f"w{i}" for i in range(96)], a)
    tok([f"v{i}" for i in range(96)], b)
    runtime = MoLRuntime(MoLConfig(models=[str(a), str(b)]))
    import logging

    with caplog.at_level(logging.WARNING, logger="mol"):
        assert runtime.tokenizer.get_vocab()["w3"] == 3
    assert "tokenizers differ" in caplog.text and str(a) in caplog.text and str(b) in caplog.text


def test_memory_efficient_loads_only_what_it_takes(sources, monkeypatch):
    import mol.fusion.runtime as runtime_module

    primary, partner = sources["gpt2"], sources["llama"]

    def build(memory_efficient):
        rt = MoLRuntime(MoLConfig(models=[primary, partner], memory_efficient=memory_efficient))
        rt.setup_embeddings()
        rt.setup_lm_head()
        rt.add_layer([(primary, 1), (partner, 2)])
        return rt.eval()

    eager = build(False)
    monkeypatch.setattr(
        runtime_module,
        "load_causal_lm",
        lambda *a, **k: pytest.fail("memory_efficient loaded a whole model"),
    )
    lazy = build(True)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(lazy.compute_logits(ids), eager.compute_logits(ids))
    assert lazy.lm_head.weight is lazy.embed_tokens.weight  # GPT-2's tied head stays tied
    assert not lazy._sources and not eager._sources  # only the taken parts remain


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_cached_top1_skips_unchosen_blocks_and_still_matches_uncached(sources, pooling):
    """With a cache, a block no row chooses is skipped; it catches up when chosen again."""
    primary, partner = sources["gpt2"], sources["wide-llama"]
    runtime = MoLRuntime(
        MoLConfig(
            models=[primary, partner],
            router_type="simple",
            pooling_type=pooling,
            top_k_experts=1,
        )
    )
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(2):
        runtime.add_layer([(primary, i), (partner, i)], layer_idx=i)
    torch.manual_seed(1)
    for layer in runtime.layers:  # decisive, token-dependent routing: the choice flips
        layer.router.gate.weight.data.normal_(std=3.0)
    runtime.eval()
    lengths = {0: [], 1: []}  # tokens per block call
    for layer in runtime.layers:
        for i, expert in enumerate(layer.experts):
            expert.register_forward_hook(lambda m, a, o, i=i: lengths[i].append(a[0].shape[1]))
    ids = torch.tensor([[3, 17, 41, 5, 60, 2]])
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    cached = runtime.generate(ids, use_cache=True, **kwargs)
    calls = [n for v in lengths.values() for n in v]  # the cached run's block calls
    assert torch.equal(cached, runtime.generate(ids, use_cache=False, **kwargs))
    dense = 2 * 2 * (ids.shape[1] + kwargs["max_new_tokens"] - 1)  # 2 layers x 2 experts
    assert sum(calls) < dense  # some block-token work was skipped ...
    catch_ups = [n for n in calls if 1 < n < ids.shape[1]]
    if pooling == "last":  # ... and, where choices flip, skipped blocks caught up
        assert catch_ups
    with torch.no_grad():  # and the routing did use both experts somewhere
        _, stats = runtime.forward(cached, return_router_stats=True)
    used = torch.stack([s["token_weights"][0].sum(0) for s in stats.values()]).sum(0)
    assert bool((used > 0).all())


def test_device_map_offloads_layers_and_keeps_the_logits(sources, tmp_path):
    """accelerate places the built runtime; layers offloaded to disk still compute the same."""
    runtime = _fused(sources)
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    with torch.no_grad():
        want = runtime.compute_logits(ids)
        kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        want_generated = runtime.generate(ids, **kwargs)
    device_map = {
        "layers.0": "cpu",
        "layers.1": "disk",
        "embed_tokens": "cpu",
        "embed_positions": "cpu",
        "embed_in": "cpu",
        "norm": "cpu",
        "lm_head": "cpu",
        "head_out": "cpu",
    }
    with pytest.raises(ConfigError, match="offload_folder"):
        runtime.dispatch(device_map)
    with pytest.raises(ConfigError, match=r"does not have: \['layers\.7'\]"):
        runtime.dispatch({**device_map, "layers.7": "cpu"}, offload_folder=str(tmp_path))
    placed = runtime.dispatch(device_map, offload_folder=str(tmp_path / "offload"))
    assert placed == device_map
    # the offloaded layer's weights live on disk, not in memory
    assert all(p.device.type == "meta" for p in runtime.layers[1].parameters())
    assert any((tmp_path / "offload").iterdir())
    with torch.no_grad():
        torch.testing.assert_close(runtime.compute_logits(ids), want, rtol=0, atol=1e-6)
        assert torch.equal(runtime.generate(ids, **kwargs), want_generated)
    with pytest.raises(ConfigError, match="already dispatched"):
        runtime.dispatch("auto")


def test_device_map_auto_in_the_config_is_applied_after_set_up(sources):
    primary = sources["llama"]
    runtime = _single(primary, device_map="auto")
    reference = AutoModelForCausalLM.from_pretrained(primary).eval()
    with torch.no_grad():
        got = runtime.compute_logits(IDS, MASK)
        want = reference(input_ids=IDS, attention_mask=MASK).logits
    assert runtime.device_map is not None and set(runtime.device_map.values()) <= {"cpu", 0}
    torch.testing.assert_close(got[MASK.bool()], want[MASK.bool()], rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="device_map must be a dict or one of"):
        MoLConfig(models=[primary], device_map="everywhere")
