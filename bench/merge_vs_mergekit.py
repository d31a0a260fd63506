"""Static merges, ours against mergekit: wall time and peak RSS on synthetic bf16 Llama models.

Generates (once, cached) three ~270M-parameter bf16 Llama checkpoints, a base and two
"fine-tunes" (base + small seeded noise, with a component the two share), then runs each
merge method through ``mol-merge CONFIG OUT --quiet`` and ``mergekit-yaml CONFIG OUT --quiet``
from the *same* YAML, each in a fresh subprocess, one at a time, alternating which tool goes
first. For every run it records wall time and the peak RSS of the process tree (psutil polled
every 50 ms, summed over the process and its children, and never below the exact
``ru_maxrss`` that ``wait4`` reports). Outputs of the deterministic methods are compared
tensor by tensor.

    python bench/merge_vs_mergekit.py                        # full run, table on stdout
    python bench/merge_vs_mergekit.py --write                # ... and into BENCHMARKS.md
    python bench/merge_vs_mergekit.py --params-millions 30   # quick smoke run

Data (checkpoints, YAMLs, outputs, logs, raw JSON) lives in ``$MOL_BENCH_DIR`` or
``bench/.cache``; the script drops a ``.gitignore`` of ``*`` there so git never picks it up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
MARK_BEGIN = "<!-- merge-bench -->"
MARK_END = "<!-- /merge-bench -->"

METHODS = ("linear", "slerp", "ties", "dare_ties", "model_stock")
RANDOMIZED = {"dare_ties"}  # outputs depend on each tool's RNG: structure is compared, not values
TOOLS = ("mol", "mergekit")
# Targets from the issue: minimum speed-up over mergekit, and the largest RSS ratio (ours/theirs).
SPEEDUP_TARGET = {"linear": 1.5, "slerp": 1.5, "ties": 5.0, "dare_ties": 5.0}
RSS_RATIO_TARGET = 0.5

VOCAB = 32_000
BASE_STD = 0.02  # std of the base's weights
DELTA_STD = 0.002  # std of a fine-tune's offset from the base
SEED = 1234
POLL_SECONDS = 0.05
MIB = 1024**2


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class LlamaShape:
    """A Llama config sized for a parameter budget (untied lm_head, no GQA)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int = VOCAB

    @classmethod
    def for_params(cls, millions: float) -> LlamaShape:
        """Pick a width from the budget, then the layer count that lands closest to it."""
        target = millions * 1e6
        hidden = (
            256 if target < 100e6 else 512 if target < 200e6 else 1024 if target < 1.2e9 else 2048
        )
        intermediate = hidden * 11 // 4  # 1024 -> 2816
        per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
        fixed = 2 * VOCAB * hidden + hidden
        layers = max(1, round((target - fixed) / per_layer))
        return cls(hidden, intermediate, layers, hidden // 64)

    def hf_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            vocab_size=self.vocab,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
            dtype="bfloat16",
            architectures=["LlamaForCausalLM"],  # mergekit picks its architecture from this
        )


def expected_tensors(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight, read off a LlamaForCausalLM built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.hf_config())
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _randn(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def write_checkpoints(root: Path, shape: LlamaShape) -> dict[str, Path]:
    """``{"base", "ft1", "ft2"}`` model directories under ``root`` (reused when complete).

    Base weights are N(0, 0.02) (norms: 1). Fine-tune i is ``base + 0.002 * (c + e_i) / sqrt(2)``
    with ``c`` shared by both fine-tunes and ``e_i`` its own, so the two task vectors have a
    cosine of about 0.5 (model_stock and TIES' sign election see some agreement), then bf16.
    """
    names = ("base", "ft1", "ft2")
    dirs = {n: root / n for n in names}
    spec = {
        **asdict(shape),
        "base_std": BASE_STD,
        "delta_std": DELTA_STD,
        "seed": SEED,
        "format": 2,
    }
    stamp = root / "spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return dirs
    if root.exists():
        shutil.rmtree(root)
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tensors = expected_tensors(shape)
    n_params = sum(_numel(s) for s in tensors.values())
    print(
        f"generating 3 checkpoints of {n_params / 1e6:.1f}M params ({shape}) in {root} ...",
        flush=True,
    )
    started = time.perf_counter()
    config = shape.hf_config()
    generator = torch.Generator().manual_seed(SEED)
    base: dict[str, torch.Tensor] = {}
    for name, s in tensors.items():
        if name.endswith("norm.weight"):
            base[name] = torch.ones(s, dtype=torch.bfloat16)
        else:
            base[name] = (BASE_STD * _randn(s, generator)).to(torch.bfloat16)
    _save_model(tmp / "base", base, config)
    fts: dict[str, dict[str, torch.Tensor]] = {"ft1": {}, "ft2": {}}
    scale = DELTA_STD / 2**0.5
    for name, s in tensors.items():
        common = _randn(s, generator)
        for ft in fts.values():
            delta = common + _randn(s, generator)
            ft[name] = (base[name].float() + scale * delta).to(torch.bfloat16)
            del delta
        del common
    del base
    for ft_name, ft in fts.items():
        _save_model(tmp / ft_name, ft, config)
    del fts
    (tmp / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    tmp.rename(root)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return dirs


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _save_model(path: Path, tensors: dict[str, torch.Tensor], config) -> None:
    path.mkdir(parents=True)
    config.save_pretrained(path)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    _save_tokenizer(path)


def _save_tokenizer(path: Path) -> None:
    """A tiny word-level tokenizer (built here, nothing downloaded), so both tools copy one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in ("the", "a", "merge", "model", "base", "weight", "tensor", "of", "and", "to"):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)


def warm_page_cache(dirs: dict[str, Path]) -> None:
    """Read every input file once, so neither tool pays for the first cold read."""
    for d in dirs.values():
        for f in sorted(d.iterdir()):
            with open(f, "rb") as fh:
                while fh.read(64 * MIB):
                    pass


# --------------------------------------------------------------------------- configs


def merge_yaml(method: str, dirs: dict[str, Path], dtype: str) -> str:
    """The mergekit YAML for ``method`` (ours reads it unchanged)."""
    base, ft1, ft2 = (str(dirs[n]) for n in ("base", "ft1", "ft2"))
    tail = f"dtype: {dtype}\nout_dtype: bfloat16\n"
    if method == "linear":
        return (
            "merge_method: linear\nmodels:\n"
            f"  - model: {ft1}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {ft2}\n    parameters: {{weight: 0.5}}\n" + tail
        )
    if method == "slerp":
        return (
            f"merge_method: slerp\nbase_model: {ft1}\nmodels:\n"
            f"  - model: {ft1}\n  - model: {ft2}\nparameters: {{t: 0.5}}\n" + tail
        )
    if method in ("ties", "dare_ties"):
        return (
            f"merge_method: {method}\nbase_model: {base}\nmodels:\n"
            f"  - model: {ft1}\n    parameters: {{density: 0.5, weight: 0.5}}\n"
            f"  - model: {ft2}\n    parameters: {{density: 0.5, weight: 0.5}}\n"
            "parameters: {normalize: true}\n" + tail
        )
    if method == "model_stock":
        return (
            f"merge_method: model_stock\nbase_model: {base}\nmodels:\n"
            f"  - model: {ft1}\n  - model: {ft2}\n" + tail
        )
    raise ValueError(f"no YAML for method {method!r}; known: {', '.join(METHODS)}")


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One subprocess: wall time, peak RSS (tree sum) and peak anonymous RSS, in bytes."""

    tool: str
    method: str
    repeat: int
    seconds: float
    peak_rss: int
    peak_anon: int
    returncode: int
    log: str


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH")
    return found


def tool_command(tool: str, config: Path, out: Path, shard_bytes: int) -> list[str]:
    """The command line of one merge; both tools get the same shard limit (bytes) and --quiet."""
    if tool == "mol":
        return [
            _tool("mol-merge"),
            str(config),
            str(out),
            "--quiet",
            "--device",
            "cpu",
            "--out-shard-size",
            str(shard_bytes),
        ]
    # mergekit: CPU only; --out-shard-size is compared with tensor bytes in its writer (the
    # help says "parameters", the code counts bytes), --lazy-unpickle only matters for .bin.
    return [
        _tool("mergekit-yaml"),
        str(config),
        str(out),
        "--quiet",
        "--no-cuda",
        "--device",
        "cpu",
        "--out-shard-size",
        str(shard_bytes),
    ]


def _anon_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, anonymous RSS) summed over ``proc`` and all its descendants."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = anon = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            continue
        anon += _anon_rss(p.pid)
    return rss, anon


# Runs the tool as its only child and reports that child's exact wall time and ru_maxrss.
# The launcher is a bare interpreter (a few MiB): Linux carries a process's RSS high-water
# mark across fork and exec, so a child forked straight from this script (which holds torch
# and, after generating checkpoints, much more) would inherit this script's peak.
_LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as fh:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, fh)
"""


def measure(cmd: list[str], log_path: Path, env: dict[str, str]) -> tuple[float, int, int, int]:
    """Run ``cmd`` alone; return (seconds, peak RSS, peak anon RSS, exit code).

    Peak RSS is the larger of the polled sum over the tool's process tree (every 50 ms) and
    the tool process's exact ``ru_maxrss``; the launcher's own few MiB are not counted.
    """
    peaks = [0, 0]
    done = threading.Event()
    result_path = log_path.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(result_path), *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        ps = psutil.Process(launcher.pid)

        def sample() -> None:
            while not done.is_set():
                try:
                    children = ps.children()
                except psutil.Error:
                    children = []
                rss = anon = 0
                for child in children:
                    r, a = _tree_memory(child)
                    rss, anon = rss + r, anon + a
                peaks[0] = max(peaks[0], rss)
                peaks[1] = max(peaks[1], anon)
                done.wait(POLL_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        launcher.wait()
        done.set()
        sampler.join()
    if launcher.returncode != 0 or not result_path.is_file():
        return float("nan"), peaks[0], peaks[1], launcher.returncode or 1
    result = json.loads(result_path.read_text())
    return (result["seconds"], max(peaks[0], result["maxrss_kib"] * 1024), peaks[1], result["rc"])


# --------------------------------------------------------------------------- comparing


@dataclass
class Comparison:
    """How far two merge outputs are apart."""

    max_abs_diff: float | None = None  # None: values not compared (randomised method)
    worst_tensor: str = ""
    frac_differ: float = 0.0  # fraction of elements that differ at all
    frac_over_1ulp: float = 0.0  # fraction that differ by more than 1 bf16 ulp
    problems: list[str] = field(default_factory=list)


def _weight_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |x| (x float32; 8 significant bits)."""
    exponent = torch.floor(torch.log2(x.abs().clamp_min(2.0**-126)))
    return torch.exp2(exponent - 7)


def compare_outputs(ours: Path, theirs: Path, values: bool) -> Comparison:
    """Compare every tensor of two output directories (names, shapes, dtypes, and values)."""
    cmp = Comparison(max_abs_diff=0.0 if values else None)
    a_files, b_files = _weight_files(ours), _weight_files(theirs)
    if set(a_files) != set(b_files):
        only_a = sorted(set(a_files) - set(b_files))[:3]
        only_b = sorted(set(b_files) - set(a_files))[:3]
        cmp.problems.append(f"tensor names differ: only mol {only_a}, only mergekit {only_b}")
    handles: dict[Path, object] = {}

    def get(path: Path, name: str) -> torch.Tensor:
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt")
        return handles[path].get_tensor(name)

    total = differ = over = 0
    for name in sorted(set(a_files) & set(b_files)):
        a, b = get(a_files[name], name), get(b_files[name], name)
        if a.shape != b.shape or a.dtype != b.dtype:
            cmp.problems.append(f"{name}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
            continue
        if not values:
            continue
        a32, b32 = a.float(), b.float()
        diff = (a32 - b32).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        if worst > cmp.max_abs_diff:
            cmp.max_abs_diff, cmp.worst_tensor = worst, name
        total += diff.numel()
        differ += int(torch.count_nonzero(diff))
        over += int(torch.count_nonzero(diff > _bf16_ulp(torch.maximum(a32.abs(), b32.abs()))))
    if values and total:
        cmp.frac_differ, cmp.frac_over_1ulp = differ / total, over / total
    return cmp


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    method: str
    mol_s: float | None
    mk_s: float | None
    mol_rss: int | None
    mk_rss: int | None
    mol_anon: int | None
    mk_anon: int | None
    cmp: Comparison | None
    failed: list[str]

    @property
    def speedup(self) -> float | None:
        return self.mk_s / self.mol_s if self.mol_s and self.mk_s else None

    @property
    def rss_ratio(self) -> float | None:
        return self.mol_rss / self.mk_rss if self.mol_rss and self.mk_rss else None

    def target(self) -> str:
        speed = SPEEDUP_TARGET.get(self.method)
        rss = f"RSS ≤ {RSS_RATIO_TARGET:g}×"
        return f"≥ {speed:g}× faster, {rss}" if speed else rss

    def verdict(self) -> str:
        if self.failed:
            return "failed"
        misses = []
        speed = SPEEDUP_TARGET.get(self.method)
        if speed is not None and (self.speedup or 0) < speed:
            misses.append("speed")
        if (self.rss_ratio or float("inf")) > RSS_RATIO_TARGET:
            misses.append("RSS")
        return "met" if not misses else f"**not met** ({', '.join(misses)})"


def build_rows(
    methods: list[str], runs: list[Run], comparisons: dict[str, Comparison]
) -> list[Row]:
    """One table row per method: medians over the successful repeats of each tool."""

    def median(method: str, tool: str, attr: str) -> float | None:
        values = [
            getattr(r, attr)
            for r in runs
            if r.method == method and r.tool == tool and r.returncode == 0
        ]
        return statistics.median(values) if values else None

    rows = []
    for m in methods:
        failed = sorted({r.tool for r in runs if r.method == m and r.returncode != 0})
        rows.append(
            Row(
                m,
                median(m, "mol", "seconds"),
                median(m, "mergekit", "seconds"),
                median(m, "mol", "peak_rss"),
                median(m, "mergekit", "peak_rss"),
                median(m, "mol", "peak_anon"),
                median(m, "mergekit", "peak_anon"),
                comparisons.get(m),
                failed,
            )
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _diff_cell(cmp: Comparison | None, tolerance: float) -> str:
    if cmp is None:
        return "—"
    flag = " ⚠" if cmp.problems or (cmp.max_abs_diff or 0) > tolerance else ""
    if cmp.max_abs_diff is None:
        return f"n/a (random){flag}"
    return f"{cmp.max_abs_diff:.2g}{flag}"


def render_table(rows: list[Row], tolerance: float) -> str:
    lines = [
        "| method | mol time (s) | mergekit time (s) | speed-up (x) | mol peak RSS (MiB) "
        "| mergekit peak RSS (MiB) | RSS ratio | max \\|diff\\| | target | status |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {_fmt(r.mol_s, '.1f')} | {_fmt(r.mk_s, '.1f')} "
            f"| {_fmt(r.speedup, '.2f')} | {_fmt(r.mol_rss and r.mol_rss / MIB, '.0f')} "
            f"| {_fmt(r.mk_rss and r.mk_rss / MIB, '.0f')} | {_fmt(r.rss_ratio, '.2f')} "
            f"| {_diff_cell(r.cmp, tolerance)} | {r.target()} | {r.verdict()} |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        "ram": f"{psutil.virtual_memory().total / 1024**3:.0f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "mergekit": version("mergekit"),
        "project-mango": version("project-mango"),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render_report(
    rows: list[Row],
    machine: dict[str, str],
    setup: dict[str, str],
    tolerance: float,
) -> str:
    parts = [
        "Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "Setup: " + "; ".join(f"{k} {v}" for k, v in setup.items()) + ".",
        "",
        render_table(rows, tolerance),
        "",
        "Peak anonymous RSS (MiB, mol / mergekit), i.e. without memory-mapped input files and "
        "libraries: "
        + "; ".join(
            f"{r.method} {_fmt(r.mol_anon and r.mol_anon / MIB, '.0f')} / "
            f"{_fmt(r.mk_anon and r.mk_anon / MIB, '.0f')}"
            for r in rows
        )
        + ".",
        "",
        "Speed-up = mergekit time / mol time; RSS ratio = mol peak RSS / mergekit peak RSS "
        "(peak RSS of the whole process tree). Targets from the issue: ties and dare_ties at "
        "least 5× faster than mergekit, linear and slerp at least 1.5×, peak RSS at most half "
        "of mergekit's for every method (model_stock has only the RSS target). "
        f"max |diff|: largest element difference over all output tensors (⚠ above {tolerance:g}, "
        "or a name/shape/dtype mismatch); dare_ties draws random masks, so only names, shapes "
        "and dtypes are compared.",
    ]
    return "\n".join(parts)


def write_benchmarks_md(report: str) -> None:
    block = f"{MARK_BEGIN}\n{report}\n{MARK_END}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.is_file() else "# Benchmarks\n"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per tool and method; the median is reported (default 1)",
    )
    parser.add_argument(
        "--params-millions",
        type=float,
        default=270.0,
        help="checkpoint size in millions of parameters (default 270; 30 for a quick smoke run)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the YAML's compute dtype; out_dtype is always bfloat16. Default "
        "float32: mol merges bf16 inputs in float32 whatever the YAML says, "
        "so only float32 gives both tools the same arithmetic",
    )
    parser.add_argument(
        "--out-shard-size",
        type=int,
        default=5 * 1000**3,
        help="largest output shard in bytes, for both tools (default 5e9, both tools' default)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-2,
        help="flag a method whose outputs differ by more (default 1e-2)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("MOL_BENCH_DIR", REPO / "bench" / ".cache")),
        help="where checkpoints and outputs live ($MOL_BENCH_DIR, else bench/.cache)",
    )
    parser.add_argument(
        "--keep-outputs",
        action="store_true",
        help="keep the merged models (last repeat) under CACHE/outputs",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"also write the report into {BENCHMARKS_MD.name} between {MARK_BEGIN} and {MARK_END}",
    )
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    script_started = time.perf_counter()
    cache = args.cache_dir.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("# benchmark data, never committed\n*\n")
    shape = LlamaShape.for_params(args.params_millions)
    tag = f"llama-{args.params_millions:g}m"
    dirs = write_checkpoints(cache / "models" / tag, shape)
    n_params = sum(_numel(s) for s in expected_tensors(shape).values())
    warm_page_cache(dirs)

    configs_dir, outputs_dir, logs_dir = (cache / d / tag for d in ("configs", "outputs", "logs"))
    for d in (configs_dir, outputs_dir, logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    load_before = os.getloadavg()
    print(f"data: {cache}  (models: {dirs['base'].parent})", flush=True)
    print(
        f"checkpoints: {n_params / 1e6:.1f}M params each, bf16, hidden {shape.hidden}, "
        f"{shape.layers} layers, intermediate {shape.intermediate}, vocab {shape.vocab}; "
        f"load average {load_before[0]:.2f}",
        flush=True,
    )

    runs: list[Run] = []
    comparisons: dict[str, Comparison] = {}
    for repeat in range(args.repeats):
        for index, method in enumerate(args.methods):
            config = configs_dir / f"{method}.yml"
            config.write_text(merge_yaml(method, dirs, args.dtype))
            order = TOOLS if (repeat + index) % 2 == 0 else TOOLS[::-1]
            for tool in order:
                out = outputs_dir / f"{method}-{tool}"
                if out.exists():
                    shutil.rmtree(out)
                os.sync()  # flush earlier runs' writes so they do not land in this run's time
                log = logs_dir / f"{method}-{tool}-{repeat}.log"
                cmd = tool_command(tool, config, out, args.out_shard_size)
                seconds, rss, anon, rc = measure(cmd, log, env)
                runs.append(Run(tool, method, repeat, seconds, rss, anon, rc, str(log)))
                status = "ok" if rc == 0 else f"FAILED (exit {rc}, log {log})"
                print(
                    f"  [{repeat + 1}/{args.repeats}] {method:<11} {tool:<8} "
                    f"{seconds:7.1f} s  peak RSS {rss / MIB:7.0f} MiB  "
                    f"(anon {anon / MIB:6.0f} MiB)  {status}",
                    flush=True,
                )
                if rc != 0:
                    tail = Path(log).read_text(errors="replace").splitlines()[-15:]
                    print("    " + "\n    ".join(tail), flush=True)
            outs = {t: outputs_dir / f"{method}-{t}" for t in TOOLS}
            if method not in comparisons and all(
                r.returncode == 0 for r in runs if r.method == method and r.repeat == repeat
            ):
                cmp = compare_outputs(outs["mol"], outs["mergekit"], method not in RANDOMIZED)
                comparisons[method] = cmp
                detail = (
                    "values not compared (random masks)"
                    if cmp.max_abs_diff is None
                    else f"max |diff| {cmp.max_abs_diff:.3g} in {cmp.worst_tensor or '-'}, "
                    f"{100 * cmp.frac_differ:.3f}% of elements differ, "
                    f"{100 * cmp.frac_over_1ulp:.4f}% by more than 1 bf16 ulp"
                )
                bad = cmp.problems or (cmp.max_abs_diff or 0) > args.tolerance
                print(
                    f"    {'WARNING: outputs differ: ' if bad else 'outputs agree: '}{detail}"
                    + "".join(f"\n    - {p}" for p in cmp.problems),
                    flush=True,
                )
            if not (args.keep_outputs and repeat == args.repeats - 1):
                for out in outs.values():
                    if out.exists():
                        shutil.rmtree(out)

    rows = build_rows(args.methods, runs, comparisons)

    load_after = os.getloadavg()
    machine = machine_info()
    setup = {
        "checkpoints": f"3 synthetic bf16 Llama models of {n_params / 1e6:.1f}M params (hidden "
        f"{shape.hidden}, {shape.layers} layers, intermediate {shape.intermediate}, "
        f"vocab {shape.vocab}, untied lm_head), one safetensors file each",
        "YAML": f"dtype {args.dtype}, out_dtype bfloat16, identical for both tools",
        "commands": f"`mol-merge CONFIG OUT --quiet --device cpu --out-shard-size "
        f"{args.out_shard_size}` vs `mergekit-yaml CONFIG OUT --quiet --no-cuda "
        f"--device cpu --out-shard-size {args.out_shard_size}`",
        "runs": f"{args.repeats} per tool and method (median), fresh subprocess each, tool order "
        f"alternating, inputs in page cache; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after",
    }
    report = render_report(rows, machine, setup, args.tolerance)
    print()
    print(report)
    results = {
        "machine": machine,
        "setup": setup,
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": [asdict(r) for r in runs],
        "comparisons": {m: asdict(c) for m, c in comparisons.items()},
    }
    results_path = cache / f"results-{tag}.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.write:
        write_benchmarks_md(report)
        print(f"\nwrote {BENCHMARKS_MD}")
    print(f"\nraw results: {results_path}")
    print(f"bench wall time: {time.perf_counter() - script_started:.0f} s")
    flagged = [
        m for m, c in comparisons.items() if c.problems or (c.max_abs_diff or 0) > args.tolerance
    ]
    return 1 if flagged or any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
