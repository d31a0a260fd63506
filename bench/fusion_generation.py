"""Greedy generation speed: one zoo expert alone vs. MoL runtimes fusing it with the other expert.

Three generators, each on the same prompt (batch 1, greedy, exactly N new tokens):

* ``single``: the code expert alone, its own Hugging Face ``generate``;
* ``mol simple top-1``: a MoL runtime over all layers of the code expert and the prose expert,
  the simple (causal pooled) router keeping one expert per position;
* ``mol token-level dense``: the same layers, a token-level router mixing both experts.

For 64 and 256 new tokens it reports the median wall time over ``--repeats`` runs (after one
warm-up), tokens per second, the ratio of each runtime's speed to the single model's, and how
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


def fused(zoo, router_type: str, top_k: int | None) -> MoLRuntime:
    """All layers of expert-code (primary) and expert-prose, one fused layer per depth."""
    code, prose = str(zoo.path("expert-code")), str(zoo.path("expert-prose"))
    runtime = MoLRuntime(
        MoLConfig(models=[code, prose], router_type=router_type, top_k_experts=top_k)
    )
    runtime.setup_embeddings()
    runtime.setup_lm_head()
    for i in range(runtime.infos[code].num_layers):
        runtime.add_layer([(code, i), (prose, i)], layer_idx=i)
    return runtime.eval()


def timed(generate, ids: torch.Tensor, new_tokens: int, repeats: int) -> float:
    """Median wall seconds of ``generate`` over ``repeats`` runs, after one warm-up."""
    kwargs = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )
    with torch.inference_mode():
        out = generate(ids, **kwargs)
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(f"generated {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate(ids, **kwargs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(size: str, repeats: int, prompt_tokens: int, counts: list[int]) -> list[Result]:
    zoo = build_zoo(size)
    ids = zoo.held_out_blocks("code")[:1, :prompt_tokens]
    single = AutoModelForCausalLM.from_pretrained(zoo.path("expert-code")).eval()
    generators = {
        "single expert (HF generate)": lambda x, **kw: single.generate(
            input_ids=x, attention_mask=torch.ones_like(x), **kw
        ),
        "mol simple top-1": fused(zoo, "simple", 1).generate,
        "mol token-level dense": fused(zoo, "token_level", None).generate,
    }
    results = []
    for name, generate in generators.items():
        result = Result(name)
        for n in counts:
            result.seconds[n] = timed(generate, ids, n, repeats)
            print(f"{name}: {n} new tokens in {result.seconds[n]:.3f} s", file=sys.stderr)
        results.append(result)
    return results


def table(results: list[Result], counts: list[int], size: str, repeats: int) -> str:
    single = results[0]
    lo, hi = counts[0], counts[-1]
    head = "| generator | " + " | ".join(f"{n} tok: s | tok/s | vs single" for n in counts)
    lines = [
        f"Zoo `{size}`, batch 1, greedy, median of {repeats} runs; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {dt.date.today().isoformat()}.",
        "",
        head + f" | time {hi}/{lo} |",
        "|---|" + "---|---|---|" * len(counts) + "---|",
    ]
    for r in results:
        cells = []
        for n in counts:
            ratio = r.tokens_per_second(n) / single.tokens_per_second(n)
            cells.append(f"{r.seconds[n]:.3f} | {r.tokens_per_second(n):.0f} | {ratio:.2f}x")
        growth = r.seconds[hi] / r.seconds[lo]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {growth:.2f} |")
    top1 = results[1]
    worst = min(top1.tokens_per_second(n) / single.tokens_per_second(n) for n in counts)
    growth = max(r.seconds[hi] / r.seconds[lo] for r in results)
    lines += [
        "",
        f"Targets: simple top-1 at least {TOP1_TARGET}x the single model "
        f"({'met' if worst >= TOP1_TARGET else 'not met'}: {worst:.2f}x at worst); "
        f"time for {hi} tokens at most {GROWTH_TARGET}x the time for {lo} "
        f"({'met' if growth <= GROWTH_TARGET else 'not met'}: {growth:.2f}x at worst).",
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
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    args = parser.parse_args()
    set_quiet(True)
    counts = sorted(args.new_tokens)
    text = table(
        run(args.size, args.repeats, args.prompt_tokens, counts), counts, args.size, args.repeats
    )
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
