"""The seed tutorial "Your First Model Fusion", step by step, on the Mango zoo's models.

The tutorial fused two hub models; here the primary is the zoo's GPT-2-architecture code model
and the partner the Llama prose expert (a different family and a different width), so it runs
offline. Run: ``python examples/first_fusion.py [--size demo|micro]``.
"""

from __future__ import annotations

import argparse

import torch

from mol import MoLConfig, MoLRuntime
from mol.zoo import build_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["demo", "micro"], default="demo")
    args = parser.parse_args()

    # Step 1: choose the models (built locally: no hub needed)
    zoo = build_zoo(args.size)
    primary, partner = str(zoo.path("gpt2-code")), str(zoo.path("expert-prose"))

    # Step 2-3: configure the fusion
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"Using device: {device}")
    config = MoLConfig(
        models=[primary, partner],
        adapter_type="linear",
        router_type="simple",
        max_layers=2,
        memory_efficient=True,
        temperature=1.0,
    )
    print(f"Models: {config.models}\nAdapter: {config.adapter_type}\nRouter: {config.router_type}")

    # Step 4: the runtime (architecture detection, target width, tokenizer of the first model)
    mol = MoLRuntime(config)
    print(f"Target hidden dim: {mol.target_hidden_dim}")
    print(f"Tokenizer vocab size: {mol.tokenizer.vocab_size}")

    # Step 5: embeddings and LM head from the primary model
    mol.setup_embeddings()
    mol.setup_lm_head()

    # Step 6: two fusion layers, each mixing layer i of both models
    for i in range(2):
        mol.add_layer([(primary, i), (partner, i)], layer_idx=i)
    print(f"Total MoL layers: {len(mol.layers)}")
    mol = mol.to(device).eval()

    # Step 7: inference with router statistics
    for text in ["def fibonacci(n):\n    return", "The with statement is used to"]:
        inputs = mol.tokenizer(text, return_tensors="pt").to(device)
        with torch.no_grad():
            hidden, stats = mol.forward(
                inputs["input_ids"], inputs["attention_mask"], return_router_stats=True
            )
        assert hidden.shape[:2] == inputs["input_ids"].shape
        print(f"\nInput: {text!r}  hidden states {tuple(hidden.shape)}")
        for layer, s in stats.items():
            weights = ", ".join(f"{w:.3f}" for w in s["expert_weights"].tolist())
            print(f"  layer {layer}: expert weights [{weights}]  entropy {s['entropy']:.3f}")
            assert abs(sum(s["expert_weights"].tolist()) - 1) < 1e-5

        # Step 8: generation (transformers' generate, KV cache across the fused blocks)
        out = mol.generate(
            inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=20,
            do_sample=False,
            no_repeat_ngram_size=3,
        )
        assert out.shape[1] > inputs["input_ids"].shape[1]
        print("  generated:", repr(mol.tokenizer.decode(out[0][inputs["input_ids"].shape[1] :])))


if __name__ == "__main__":
    main()
