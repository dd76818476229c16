"""``python -m benchmarks.levers``: what each lever the profile points at gives the OpenVINO INT8
model on this CPU, measured in the same interleaved rounds as its baseline.

The INT8 row of ``python -m benchmarks`` (the same cached artefact) runs once as it is and once
per lever, each in a worker of its own; the INT8 matrix-multiply ceiling is measured once per
round with them. Per lever: model call and end to end (p50), the share of the INT8 ceiling, the
speedup over the baseline from the same rounds, AbsRel against PyTorch FP32, how far its depth
moves from the baseline's, and its profile (``benchmarks.profile``). Levers:

- the float parts (softmax, norms, element-wise) in f32 instead of bf16 (the benchmark's INT8 row
  asks for bf16 where the CPU has the units, as OpenVINO's default did; ``precision="fp32"``);
- no attention fusion (OpenVINO's ``SNIPPETS_MODE=DISABLE``): what the fused attention kernel gives;
- pre-processing inside the compiled model (``preprocess="model"``): uint8 BGR frames in;
- denormals flushed to zero (``CPU_DENORMALS_OPTIMIZATION``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from commands.runner import command
from export.cli import parse_hw
from export.metrics import abs_rel, compare
from runtime.io.files import atomic_write_bytes

from .__main__ import measure, operation_counts, roofline_section
from .artifacts import calibration_folder, load_images, resolve_model
from .cpu import detect
from .profile import KINDS, add_efficiency
from .ranking import same_rounds_ratio
from .roofline import add_throughput
from .runner import Config, Settings, make_configs
from .target import LEVERS as TARGET_LEVERS

BASELINE = "as the benchmark runs it"
# The levers themselves live with the frame-rate target's search, which measures the ones a
# deployment can take (benchmarks.target.LEVERS, NOT_SEARCHED).
LEVERS: list[tuple[str, str | None, dict]] = [(BASELINE, None, {}), *TARGET_LEVERS]


def lever_configs(base: Config) -> list[Config]:
    """The benchmark's INT8 row as it is, then once per lever (a precision of None: the row's own)."""
    return [
        Config(
            "openvino",
            "int8",
            base.size,
            base.build,
            precision or base.precision_arg,
            "cpu",
            variant=name,
            options=options,
        )
        for name, precision, options in LEVERS
    ]


def agreement(row: dict, baseline: dict) -> dict | None:
    """How far a lever's depth moved from the baseline's on the same images."""
    if not row.get("outputs") or not baseline.get("outputs"):
        return None
    ours, theirs = dict(np.load(row["outputs"])), dict(np.load(baseline["outputs"]))
    names = sorted(set(ours) & set(theirs))
    return {
        "max_rel_std": max(compare(ours[n], theirs[n]).max_rel_std for n in names),
        "abs_rel": abs_rel([ours[n] for n in names], [theirs[n] for n in names]),
    }


def summary(rows: list[dict]) -> list[dict]:
    baseline = rows[0]
    table = []
    for row in rows:
        model, e2e = row.get("model_call") or {}, row.get("end_to_end") or {}
        profile = row.get("profile") or {}
        table.append(
            {
                "lever": row["variant"],
                "status": row.get("status"),
                "error": row.get("error"),
                "runs_in": row.get("computes_in"),
                "model_ms": model.get("median", 0) * 1e3 or None,
                "e2e_ms": e2e.get("median", 0) * 1e3 or None,
                "e2e_over_model": e2e["median"] / model["median"] if model and e2e else None,
                "share_of_int8_ceiling": row.get("share_of_ceiling"),
                "model_speedup": same_rounds_ratio(baseline, row, "model") if row.get("round_medians") else None,
                "e2e_speedup": same_rounds_ratio(baseline, row, "e2e") if row.get("round_medians") else None,
                "abs_rel_vs_fp32": (row.get("vs_fp32") or {}).get("abs_rel"),
                "vs_baseline": agreement(row, baseline),
                "profile_ms": {k: v["ms"] for k, v in (profile.get("kinds") or {}).items()},
                "attention_share_of_ceiling": ((profile.get("efficiency") or {}).get("attention") or {}).get(
                    "share_of_ceiling"
                ),
            }
        )
    return table


def markdown(data: dict) -> str:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    kinds = [k for k in KINDS if any(k in r["profile_ms"] for r in data["levers"])]
    lines = [
        f"# Levers for OpenVINO INT8 at {data['size']} on {data['cpu']}",
        "",
        f"- **Reliability**: {data['reliability']}",
        f"- **INT8 ceiling**: {data['int8_ceiling_gops']:.0f} G/s (best of the rounds); work {data['work_gops']:.1f} G "
        "operations per frame",
        "",
        "| lever | runs in | model ms | e2e ms | e2e/model | % of INT8 ceiling | fused attention, % of ceiling "
        "| speedup model (e2e) | AbsRel vs FP32 | vs baseline max/std | "
        + " | ".join(f"{KINDS[k]} ms" for k in kinds)
        + " |",
        "|" + "---|" * (10 + len(kinds)),
    ]
    for r in data["levers"]:
        moved = r["vs_baseline"] or {}
        lines.append(
            f"| {r['lever']} | {r['runs_in'] or '-'} | {num(r['model_ms'], '.1f')} | {num(r['e2e_ms'], '.1f')} "
            f"| {num(r['e2e_over_model'], '.3f')} | {num(r['share_of_int8_ceiling'], '.0%')} "
            f"| {num(r['attention_share_of_ceiling'], '.0%')} "
            f"| {num(r['model_speedup'], '.3f')}x ({num(r['e2e_speedup'], '.3f')}x) "
            f"| {num(r['abs_rel_vs_fp32'], '.4f')} "
            f"| {num(moved.get('max_rel_std'), '.1e')} | "
            + " | ".join(num(r["profile_ms"].get(k), ".1f") for k in kinds)
            + " |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="model (default: as python -m benchmarks finds one)")
    parser.add_argument("--no-hub", action="store_true", help="never try the Hugging Face hub")
    parser.add_argument("--calib-dir", type=Path, help="SA-1B shards or images for INT8 calibration")
    parser.add_argument("--size", type=parse_hw, default=(518, 518), help="HxW (default 518x518)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per lever (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--calib-samples", type=int, default=16, help="calibration images (default 16, as --quick)")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/bench"), help="artefact cache")
    parser.add_argument("--output", type=Path, default=Path("reports/levers"), help="levers.json and levers.md here")
    return parser


@command("python -m benchmarks.levers")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    cpu = detect()
    workdir = args.work_dir
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(workdir, 2, args.runs, args.rounds, args.calib_dir, args.calib_samples, 0.1, cpu)
    source = resolve_model(args.checkpoint, workdir, use_hub=not args.no_hub)
    images, ground_truth, _ = load_images(None, 3)
    calibration_folder(args.calib_dir, workdir, args.calib_samples)
    np.savez(workdir / "eval_images.npz", **images)
    every = make_configs(source, [args.size], settings, False)
    base = next(c for c in every if (c.backend, c.precision) == ("openvino", "int8"))
    configs = lever_configs(base)
    timed = measure(configs, settings, source, images, ground_truth, ("int8",), group="levers")
    roofline = roofline_section(timed["ceilings"], operation_counts(every, [args.size]))
    rows = [c.row() for c in configs]
    add_throughput(rows, roofline)
    add_efficiency(rows, roofline)
    key = f"{args.size[0]}x{args.size[1]}"
    state = timed["machine_state"]
    data = {
        "cpu": f"{cpu.model} ({cpu.summary()})",
        "size": key,
        "model": source.description,
        "reliability": f"other programs took {state.get('others', float('nan')):.0%} of the CPU while the rounds ran "
        f"(at most {max(state.get('rounds_others') or [0]):.0%} in one round); steal {state.get('steal', 0):.0%}",
        "int8_ceiling_gops": timed["ceilings"]["int8"]["ops_per_s"] / 1e9,
        "work_gops": roofline["work"][key]["ops"] / 1e9,
        "levers": summary(rows),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "levers.json", (json.dumps(data, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(args.output / "levers.md", markdown(data).encode())
    print(markdown(data))
    print(f"wrote {args.output}/levers.json and levers.md in {data['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
