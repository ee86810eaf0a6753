"""`quantbench fit` end to end: candidates -> budget checks -> sensitivities -> knapsack -> llama.cpp writes.

Nothing is written at OUT until the plan is solved, written by llama.cpp, and checked type by type and
byte by byte; the frontier (JSON + plot) lands beside it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from quantbench.errors import QuantbenchError
from quantbench.fit.activations import ACTIVATIONS_VERSION, activation_type, cached_activation_costs, with_activation_costs
from quantbench.fit.budget import KV_CACHE_TYPES, RuntimeSetting, kv_cache_bytes, measure_buffers, runtime_memory
from quantbench.fit.candidates import DEFAULT_TYPES, TensorCandidates, tensor_candidates
from quantbench.fit.sensitivity import SensitivitySettings, cache_key, measure_sensitivity
from quantbench.methods.allocate import Allocation, Frontier, Group, Option

log = logging.getLogger(__name__)

KV_GROUP = "kv_cache"  # the knapsack group of the KV-cache type (its bytes include the buffers)
FIT_VERSION = 1
# Uniform llama.cpp file types drawn beside the frontier (with an importance matrix).
UNIFORM_TYPES = ("Q3_K_M", "IQ4_XS", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


@dataclass(frozen=True)
class FitConfig:
    budget_bytes: int
    context: int = 4096
    kv_cache_types: tuple[str, ...] = KV_CACHE_TYPES
    types: tuple[str, ...] = DEFAULT_TYPES  # ggml types fit may ask llama.cpp for
    exclude_types: tuple[str, ...] = ()  # written types never chosen (e.g. Q4_1 on a Q4_1-grid model)
    tolerance: float = 1e-3  # the solution is optimal for a budget at most this fraction smaller
    sensitivity: SensitivitySettings = field(default_factory=SensitivitySettings)
    version: int = FIT_VERSION

    def __post_init__(self):
        if self.budget_bytes <= 0:
            raise QuantbenchError("--budget must be positive")
        bad = [k for k in self.kv_cache_types if k not in KV_CACHE_TYPES]
        if bad or not self.kv_cache_types:
            raise QuantbenchError(f"KV-cache types must be among {', '.join(KV_CACHE_TYPES)}")
        RuntimeSetting(self.context)  # validates the context


def _lossless_intermediate(source, arch, workdir: Path) -> Path:
    """The source weights exactly, as a GGUF (written once per model, cached): what llama.cpp quantizes."""
    from quantbench.recipes.gguf import _lossless_writer_type, write_source_gguf

    kind = _lossless_writer_type(source.path)
    path = workdir / f"intermediate-{kind.lower()}.gguf"
    if not path.is_file():
        write_source_gguf(source, arch, path, kind)
    return path


def _fixed_tensor_bytes(intermediate: Path, candidates: list[TensorCandidates]) -> int:
    """Bytes of every tensor in the file that fit does not choose (norms, biases, rope factors: F32)."""
    from quantbench.formats.gguf_types import read_tensor_types

    chosen = {c.gguf_name for c in candidates}
    return sum(b for name, (_, b) in read_tensor_types(intermediate).items() if name not in chosen)


def _fmt(n: int) -> str:
    return f"{n / 1e6:,.2f} MB" if n < 1e9 else f"{n / 1e9:,.3f} GB"


def runtime_options(arch, intermediate: Path, config: FitConfig) -> dict[str, tuple[int, int]]:
    """KV type -> (KV-cache bytes, llama.cpp buffer bytes) at the configured context."""
    out = {}
    for kv in config.kv_cache_types:
        setting = RuntimeSetting(config.context, kv)
        out[kv] = (kv_cache_bytes(arch, setting), measure_buffers(intermediate, setting))
    return out


def check_feasible(config: FitConfig, fixed: int, candidates: list[TensorCandidates], runtime: dict[str, tuple[int, int]]) -> None:
    """The two impossible budgets, each one clear error naming the smallest achievable size."""
    smallest_runtime = min(kv + buffers for kv, buffers in runtime.values())
    kv_type = min(runtime, key=lambda k: sum(runtime[k]))
    if smallest_runtime >= config.budget_bytes:
        raise QuantbenchError(
            f"--context {config.context} alone needs {_fmt(smallest_runtime)} (KV cache {kv_type} + llama.cpp buffers), "
            f"more than the budget of {_fmt(config.budget_bytes)}; lower --context or raise --budget"
        )
    smallest = fixed + sum(min(c.bytes) for c in candidates) + smallest_runtime
    if smallest > config.budget_bytes:
        raise QuantbenchError(
            f"the smallest artifact fit can make needs {_fmt(smallest)} at --context {config.context} (every tensor at its "
            f"smallest type, KV cache {kv_type}), more than the budget of {_fmt(config.budget_bytes)}; "
            f"raise --budget to at least {_fmt(smallest)} or lower --context"
        )


def build_groups(candidates: list[TensorCandidates], cost: dict, runtime: dict[str, tuple[int, int]], kv_cost: dict) -> list[Group]:
    groups = [Group(c.gguf_name, tuple(Option(t, b, cost[c.gguf_name][t]) for t, b in zip(c.types, c.bytes))) for c in candidates]
    groups.append(Group(KV_GROUP, tuple(Option(kv, kv_b + buf_b, kv_cost[kv]) for kv, (kv_b, buf_b) in runtime.items())))
    return groups


def uniform_plans(arch, candidates: list[TensorCandidates]) -> dict[str, dict[str, str]]:
    """llama.cpp's uniform -imat file types as per-tensor plans (tensor -> the type llama.cpp writes),
    for those whose every type is a candidate here."""
    from quantbench.formats.gguf_types import FILE_TYPES
    from quantbench.methods.gguf_mixture import MixtureContext, llama_cpp_tensor_type

    ctx = MixtureContext.from_arch(arch, has_imatrix=True)
    layer = {t.gguf_name: t.layer for t in arch.tensors()}
    plans = {}
    for file_type in UNIFORM_TYPES:
        plan = {c.gguf_name: llama_cpp_tensor_type(c.gguf_name, c.shape, file_type, FILE_TYPES[file_type].base, ctx,
                                                   layer[c.gguf_name]) for c in candidates}
        if all(plan[c.gguf_name] in c.types for c in candidates):
            plans[f"{file_type}-imat"] = plan
    return plans


def uniform_points(arch, candidates: list[TensorCandidates], fixed: int, cost: dict, runtime, kv_cost: dict) -> list[dict]:
    """Predicted KLD and exact bytes of the uniform plans, with an F16 KV cache."""
    if "F16" not in runtime:
        return []
    points = []
    for name, plan in uniform_plans(arch, candidates).items():
        weights = fixed + sum(c.bytes[c.types.index(plan[c.gguf_name])] for c in candidates)
        points.append({"name": name, "weights_bytes": weights, "total_bytes": weights + sum(runtime["F16"]),
                       "predicted_kld": kv_cost.get("F16", 0.0) + sum(cost[c.gguf_name][plan[c.gguf_name]] for c in candidates)})
    return points


def best_allocation(frontier: Frontier, capacity: int, seeds: dict[str, dict[str, str]]) -> tuple[Allocation, str]:
    """The knapsack's allocation at `capacity`, or a seed plan (e.g. a uniform type with any KV-cache type)
    that fits exactly and, polished, is predicted better: the DP rounds bytes up, so a plan that fits to
    the byte can be out of its reach. Returns the allocation and where it came from."""
    best, origin = frontier.solve(capacity), "the knapsack"
    for name, seed in seeds.items():
        allocation = frontier.allocation(seed)
        if allocation.bytes <= capacity:
            allocation = frontier.polish(allocation, capacity)
            if allocation.cost < best.cost:
                best, origin = allocation, f"the uniform {name} plan, then the bytes left spent"
    return best, origin


def activation_summary(activation: dict, plan: dict) -> dict:
    """The activation-rounding share of the prediction: per activation type, its sum over the tensors that
    can take it, and what the chosen plan pays."""
    kinds = sorted({k for per in activation.values() for k in per})
    return {"total_by_type": {k: sum(per.get(k, 0.0) for per in activation.values()) for k in kinds},
            "plan": sum(activation[n][activation_type(t)] for n, t in plan.items()),
            "backend": "llama.cpp CPU (ggml-cpu vec_dot types)"}


@dataclass
class FitSetup:
    """What fit knows before measuring anything: the tensors, their candidates, the fixed bytes, and
    for each KV-cache type its bytes and llama.cpp's buffers at the context."""

    arch: object
    candidates: list[TensorCandidates]  # every candidate type (the sensitivity table covers these)
    allowed: list[TensorCandidates]  # the same without the excluded types (the knapsack chooses among these)
    workdir: Path
    intermediate: Path
    fixed: int
    runtime: dict[str, tuple[int, int]]


def prepare_fit(work, config: FitConfig, progress: Callable[[str], None] = lambda m: None) -> FitSetup:
    from quantbench.arch import ArchSpec
    from quantbench.methods.gguf_mixture import MixtureContext
    from quantbench.sources.model import cache_dir

    source = work.source
    arch = ArchSpec.from_config(source.config())
    MixtureContext.from_arch(arch, True)  # architectures the GGUF path cannot write fail here, before any work
    candidates = tensor_candidates(arch, config.types)
    allowed = tensor_candidates(arch, config.types, config.exclude_types)
    workdir = cache_dir() / "fit" / cache_key(source.fingerprint)
    workdir.mkdir(parents=True, exist_ok=True)
    progress("lossless intermediate GGUF")
    intermediate = _lossless_intermediate(source, arch, workdir)
    fixed = _fixed_tensor_bytes(intermediate, candidates)
    progress(f"llama.cpp buffers at --context {config.context}")
    runtime = runtime_options(arch, intermediate, config)
    return FitSetup(arch, candidates, allowed, workdir, intermediate, fixed, runtime)


def fit_model(work, config: FitConfig, out: Path, device: str = "cpu", progress: Callable[[str], None] = lambda m: None) -> dict:
    """Choose every tensor's type and the KV-cache type under `config.budget_bytes`, write OUT.gguf."""
    from quantbench.recipes.base import QuantizeJob
    from quantbench.recipes.gguf import imatrix_for_job
    from quantbench.runtimes.llamacpp import KV_CACHE_METADATA_KEY

    started = time.perf_counter()
    out = Path(out)
    if out.suffix != ".gguf":
        raise QuantbenchError(f"-o {out}: fit writes one GGUF file; give a name ending in .gguf")
    if len(work.calibration) < 2:
        raise QuantbenchError("fit needs calibration text (at least 2 windows of the calibration split); give a longer --text")
    setup = prepare_fit(work, config, progress)
    source, arch, workdir, intermediate, fixed, runtime = (work.source, setup.arch, setup.workdir, setup.intermediate,
                                                           setup.fixed, setup.runtime)
    check_feasible(config, fixed, setup.allowed, runtime)

    progress("importance matrix")
    job = QuantizeJob(source, workdir, device, lambda: work.calibration)
    imatrix, imatrix_info = imatrix_for_job(job, arch)
    # every KV type llama.cpp can use here is measured (cheap), so one cached table serves any --kv-cache-types
    kv_types = KV_CACHE_TYPES if arch.head_dim % 32 == 0 else ("F16",)
    key = cache_key(source.fingerprint, work.text.fingerprint, work.calibration, imatrix_info["cache"], sorted(config.types),
                    asdict(config.sensitivity), kv_types)
    sensitivity = measure_sensitivity(source.path, intermediate, arch, setup.candidates, imatrix, work.calibration,
                                      config.sensitivity, kv_types, workdir / f"sensitivity-{key}.json", device, progress)
    activations_key = cache_key(source.fingerprint, work.calibration, sorted(config.types), asdict(config.sensitivity),
                                ACTIVATIONS_VERSION)
    activation = cached_activation_costs(source.path, arch, setup.candidates, work.calibration, config.sensitivity,
                                         workdir / f"activations-{activations_key}.json", device, progress)
    cost = with_activation_costs(sensitivity.cost, activation)
    candidates = setup.allowed
    groups = build_groups(candidates, cost, runtime, sensitivity.kv_cost)

    progress("solving the knapsack")
    seeds = {f"{name} (KV {kv})": {**plan, KV_GROUP: kv} for name, plan in uniform_plans(arch, candidates).items()
             for kv in runtime}
    frontier = Frontier(groups, config.budget_bytes - fixed, config.tolerance)
    allocation, origin = best_allocation(frontier, config.budget_bytes - fixed, seeds)
    kv = allocation.choice[KV_GROUP]
    plan = {c.gguf_name: allocation.choice[c.gguf_name] for c in candidates}
    plan_bytes = {c.gguf_name: c.bytes[c.types.index(plan[c.gguf_name])] for c in candidates}
    weights = fixed + sum(plan_bytes.values())
    setting = RuntimeSetting(config.context, kv)
    memory = runtime_memory(weights, arch, setting, runtime[kv][1], "measured from llama.cpp's log on this model")
    if memory.total > config.budget_bytes:
        raise AssertionError("the knapsack exceeded its budget")  # a bug, not bad input

    progress(f"writing {out.name} with llama.cpp")
    from quantbench.fit.write import write_plan

    # String key-values that llama.cpp's quantizer writes into OUT's header as it writes the file, so the
    # cached intermediate is quantized directly (no second full-precision copy just to carry them).
    metadata = {KV_CACHE_METADATA_KEY: kv, "quantbench.fit.version": FIT_VERSION, "quantbench.fit.context": config.context,
                "quantbench.fit.budget_bytes": config.budget_bytes, "quantbench.fit.predicted_kld": allocation.cost,
                "quantbench.fit.flash_attention": "on", "quantbench.fit.llama_cpp_flags": setting.llama_cpp_flags()}
    written = write_plan(intermediate, out, plan, plan_bytes, imatrix, {k: str(v) for k, v in metadata.items()})
    if written["tensor_bytes"] != weights:
        out.unlink(missing_ok=True)
        raise QuantbenchError(f"{out.name}: written tensor bytes {written['tensor_bytes']:,} differ from the plan's "
                              f"{weights:,}; the file was removed")

    report = {
        "artifact": str(out), "budget_bytes": config.budget_bytes, "context": config.context, "kv_cache_type": kv,
        "llama_cpp_flags": setting.llama_cpp_flags(), "memory": memory.to_json(), "predicted_kld": allocation.cost,
        "plan_origin": origin,
        "tensor_types": written["tensor_types"], "weights_bytes": weights, "file_bytes": written["file_bytes"],
        "bits_per_weight": 8 * weights / arch.num_params(), "plan": plan,
        "sensitivity": {"scale": sensitivity.scale, "spearman": sensitivity.spearman,
                        "spearman_within_type": sensitivity.spearman_within_type, "direct": sensitivity.direct,
                        "kv_cost": sensitivity.kv_cost, "tokens": sensitivity.tokens, "settings": sensitivity.settings,
                        "seconds": sensitivity.seconds,
                        "activation_rounding": activation_summary(activation, plan)},
        "config": {**asdict(config), "sensitivity": asdict(config.sensitivity)},
        "imatrix": imatrix_info, "seconds": time.perf_counter() - started,
    }
    report["frontier"] = frontier_json(arch, candidates, fixed, groups, runtime, cost, sensitivity.kv_cost, config)
    write_frontier(report, out)
    return report


def frontier_json(arch, candidates, fixed, groups, runtime, cost: dict, kv_cost: dict, config: FitConfig) -> dict:
    """The whole predicted KLD-vs-bytes frontier (every budget at once) and the uniform types beside it."""
    top = fixed + sum(max(o.bytes for o in g.options) for g in groups)
    points = Frontier(groups, top - fixed, config.tolerance).points(300)
    return {
        "context": config.context,
        "points": [{"total_bytes": fixed + p.bytes, "predicted_kld": p.cost, "kv_cache_type": p.choice[KV_GROUP],
                    "weights_bytes": fixed + p.bytes - sum(runtime[p.choice[KV_GROUP]])} for p in points],
        "uniform": uniform_points(arch, candidates, fixed, cost, runtime, kv_cost),
    }


def write_frontier(report: dict, out: Path) -> tuple[Path, Path]:
    from quantbench.artifact import write_json_atomic
    from quantbench.report.frontier import plot_frontier

    json_path = out.with_name(out.stem + ".frontier.json")
    png_path = out.with_name(out.stem + ".frontier.png")
    write_json_atomic(json_path, report)
    plot_frontier(report["frontier"], png_path, chosen={"total_bytes": report["memory"]["total"],
                                                        "predicted_kld": report["predicted_kld"]})
    return json_path, png_path
