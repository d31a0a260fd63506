"""Greedy generation speed: one zoo expert alone vs. MoL runtimes fusing it with the other expert.

Three generators, each on the same prompt (batch 1, greedy, exactly N new tokens), for the
zoo experts and (``--wide``) for two random Llama models of a realistic width:

* ``single``: the code expert alone, its own Hugging Face ``generate``;
* ``mol simple top-1``: a MoL runtime over all layers of the code expert and the prose expert,
  the simple (causal pooled) router keeping one expert per position;
* ``mol token-level dense``: the same layers, a token-level router mixing both experts.

For 64 and 256 new tokens it reports the median wall time over ``--repeats`` rounds (after one
warm-up; each round runs every generator once, in turn), tokens per second, the ratio of each runtime's speed to the single model's, and how
the time grows from 64 to 256 tokens (linear growth is 4x). The routers are untrained (seeded
initialisation), which is what a freshly built runtime runs.

    python bench/fusion_generation.py                  # demo zoo (built if missing), table on stdout
    python bench/fusion_generation.py --write          # ... and into BENCHMARKS.md
    python bench/fusion_generation.py --size micro     # quick smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mol import MoLConfig, MoLRuntime  # noqa: E402
from mol._progress import set_quiet  # noqa: E402
from mol.zoo import build_zoo  # noqa: E402

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
MARK_BEGIN = "<!-- fusion-bench -->"
MARK_END = "<!-- /fusion-bench -->"
TOP1_TARGET = 0.8  # simple top-1 speed / single model speed, at least
GROWTH_TARGET = 4.5  # time(256 new tokens) / time(64 new tokens), at most


@dataclass
class Result:
    """Median seconds per new-token count for one generator."""

    name: str
    seconds: dict[int, float] = field(default_factory=dict)

    def tokens_per_second(self, n: int) -> float:
        return n / self.seconds[n]


def fused(code: str, prose: str, router_type: str, top_k: int | None) -> MoLRuntime:
    """All layers of ``code`` (primary) and ``prose``, one fused layer per depth."""
    runtime = MoLRuntime(
        MoLConfig(models=[code, prose], router_type=router_type, top_k_experts=top_k)
    )
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(runtime.infos[code].num_layers):
        runtime.add_layer([(code, i), (prose, i)], layer_idx=i)
    return runtime.eval()


def timed(generators: dict, ids: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """Median wall seconds per generator over ``repeats`` rounds, after one warm-up each.

    Each round runs every generator once, in turn, so a slow spell of the machine hits all
    of them alike.
    """
    kwargs = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )
    times: dict[str, list[float]] = {name: [] for name in generators}
    with torch.inference_mode():
        for generate in generators.values():
            out = generate(ids, **kwargs)
            if out.shape[1] != ids.shape[1] + new_tokens:
                raise RuntimeError(
                    f"generated {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}"
                )
        for _ in range(repeats):
            for name, generate in generators.items():
                start = time.perf_counter()
                generate(ids, **kwargs)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def wide_pair(hidden: int) -> tuple[str, str]:
    """Two random Llama models like the zoo's experts but ``hidden`` wide (cached on disk)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = Path(os.environ.get("MOL_BENCH_DIR", REPO / "bench" / ".cache")) / "fusion"
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / ".gitignore").write_text("*\n")
    paths = []
    for seed in (1, 2):
        path = root / f"llama-{hidden}-{seed}"
        if not (path / "config.json").is_file():
            torch.manual_seed(seed)
            config = LlamaConfig(
                hidden_size=hidden,
                intermediate_size=3 * hidden,
                num_hidden_layers=4,
                num_attention_heads=hidden // 64,
                num_key_value_heads=hidden // 128,
                vocab_size=2048,
                max_position_embeddings=512,
            )
            LlamaForCausalLM(config).save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]


def run(
    code: str, prose: str, ids: torch.Tensor, repeats: int, counts: list[int], label: str
) -> list[Result]:
    single = AutoModelForCausalLM.from_pretrained(code).eval()
    generators = {
        f"{label}: single model (HF generate)": lambda x, **kw: single.generate(
            input_ids=x, attention_mask=torch.ones_like(x), **kw
        ),
        f"{label}: mol simple top-1": fused(code, prose, "simple", 1).generate,
        f"{label}: mol token-level dense": fused(code, prose, "token_level", None).generate,
    }
    results = {name: Result(name) for name in generators}
    for n in counts:
        for name, seconds in timed(generators, ids, n, repeats).items():
            results[name].seconds[n] = seconds
            print(f"{name}: {n} new tokens in {seconds:.3f} s", file=sys.stderr)
    return list(results.values())


def table(groups: list[list[Result]], counts: list[int], note: str, repeats: int) -> str:
    lo, hi = counts[0], counts[-1]
    head = "| generator | " + " | ".join(f"{n} tok: s | tok/s | vs single" for n in counts)
    lines = [
        f"{note}; batch 1, greedy, median of {repeats} runs; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {dt.date.today().isoformat()}.",
        "",
        head + f" | time {hi}/{lo} |",
        "|---|" + "---|---|---|" * len(counts) + "---|",
    ]
    for results in groups:
        single = results[0]
        for r in results:
            cells = []
            for n in counts:
                ratio = r.tokens_per_second(n) / single.tokens_per_second(n)
                cells.append(f"{r.seconds[n]:.3f} | {r.tokens_per_second(n):.0f} | {ratio:.2f}x")
            growth = r.seconds[hi] / r.seconds[lo]
            lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {growth:.2f} |")
    results = groups[0]  # the targets are about the zoo experts and the MoL runtimes
    single, top1 = results[0], results[1]
    worst = min(top1.tokens_per_second(n) / single.tokens_per_second(n) for n in counts)
    growth = max(r.seconds[hi] / r.seconds[lo] for r in results[1:])
    lines += [
        "",
        f"Targets: simple top-1 at least {TOP1_TARGET}x the single model "
        f"({'met' if worst >= TOP1_TARGET else 'not met'}: {worst:.2f}x at worst); "
        f"a MoL runtime's time for {hi} tokens at most {GROWTH_TARGET}x its time for {lo} "
        f"({'met' if growth <= GROWTH_TARGET else 'not met'}: {growth:.2f}x at worst; the "
        f"single model: {single.seconds[hi] / single.seconds[lo]:.2f}x).",
    ]
    return "\n".join(lines)


def write(text: str) -> None:
    doc = BENCHMARKS_MD.read_text()
    if MARK_BEGIN not in doc:
        raise SystemExit(f"{BENCHMARKS_MD} has no {MARK_BEGIN} ... {MARK_END} section")
    head, rest = doc.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    BENCHMARKS_MD.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="demo", choices=["demo", "micro"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--wide",
        type=int,
        default=1024,
        help="also time two random Llama models this wide (0: skip), to show how the ratio "
        "depends on model width",
    )
    parser.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    args = parser.parse_args()
    set_quiet(True)
    counts = sorted(args.new_tokens)
    zoo = build_zoo(args.size)
    ids = zoo.held_out_blocks("code")[:1, : args.prompt_tokens]
    code, prose = str(zoo.path("expert-code")), str(zoo.path("expert-prose"))
    groups = [run(code, prose, ids, args.repeats, counts, f"zoo {args.size}")]
    note = f"Zoo `{args.size}` experts (hidden {zoo.spec.models[1].hidden})"
    if args.wide:
        groups.append(run(*wide_pair(args.wide), ids, args.repeats, counts, f"hidden {args.wide}"))
        note += f" and random 4-layer Llama models of hidden {args.wide}"
    text = table(groups, counts, note, args.repeats)
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
