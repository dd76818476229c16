"""``python -m benchmarks --model A --model B ...``: the artefacts you have, timed and scored as they are.

Nothing is exported or built: the engine a team built on its Jetson, the IR on its OpenVINO box,
each runs on the backend that loads it, in a worker process of its own, in the same interleaved
rounds as every benchmark (``benchmarks.rounds``). Accuracy is against each artefact's own
reference (the FP32 outputs its export wrote beside it, ``runtime.reference``), not against
PyTorch, so this needs only the runtime's dependencies: numpy, OpenCV, tqdm and each artefact's
backend library (no PyTorch; no OpenVINO unless an IR is given), on the runtime's Python 3.8.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from commands.errors import ModelFileError
from runtime.backends import backend_class, resolve_backend
from runtime.metadata import read_sidecar
from runtime.reference import check_belongs, find_reference, load_reference

from .checks import assess
from .cpu import detect
from .machine import machine_facts
from .ranking import rank
from .report import publish
from .rounds import time_rows
from .runner import STATUS_INVALID, STATUS_OK, Config, Settings, prepare

MODE = "artefacts"


def calibration_text(meta: dict) -> str | None:
    """What an INT8 artefact was calibrated on, from its sidecar."""
    calibration = meta.get("calibration")
    if not calibration:
        return None
    quantization = meta.get("quantization") or {}
    method = quantization.get("method") or quantization.get("tool")
    held = f", {calibration['held_out']} held out" if calibration.get("held_out") else ""
    return f"{calibration.get('count')} images from {calibration.get('source')}{held}" + (
        f" ({method})" if method else ""
    )


CHECKPOINT = "checkpoint"  # a model given as its checkpoint: the FP32 network itself, run by PyTorch
NO_LICENCE = "none stated"


def artefact_facts(path: Path, backend: str, meta: dict, reference: Path | None) -> dict:
    """What the report says about an artefact: its sidecar's facts (the model's too, which
    ``model_facts`` completes from what the runtime read once it ran) and its reference."""
    gpu = meta.get("gpu") or {}
    return {
        "artefact": str(path),
        "backend": backend,
        "precision": meta.get("precision", "unknown (no sidecar)"),
        "calibration": calibration_text(meta),
        "tensorrt": (meta.get("versions") or {}).get("tensorrt"),
        "built_on": gpu.get("name"),
        "family": meta.get("family"),
        "variant": meta.get("variant"),
        "output_kind": meta.get("output_kind"),
        "extra_outputs": None,
        "stream": meta.get("stream"),
        "licence": meta.get("licence"),
        "sidecar": bool(meta),
        "reference": str(reference) if reference else None,
        "export_check": meta.get("verification"),
    }


def model_facts(fact: dict, result: dict) -> None:
    """``fact``'s family, variant, output kind, extra outputs and licence as the runtime read them
    from the model (its worker's ``info``), where the sidecar said nothing; a licence nobody
    states is said so."""
    info = result.get("info") or {}
    for key in ("family", "variant", "licence"):
        if not fact.get(key) or fact[key] == "unknown":
            fact[key] = info.get(key) if info.get(key) not in (None, "unknown") else fact.get(key)
    fact["output_kind"] = (info.get("output") or {}).get("kind") or fact.get("output_kind")
    if info:
        fact["extra_outputs"] = list(info.get("extra_outputs") or [])
        fact["stream"] = fact.get("stream") or (info.get("stream") and "yes")
    if not fact.get("licence") or fact["licence"] == "unknown":
        fact["licence"] = NO_LICENCE


def model_input_hw(path: Path, backend: str) -> tuple[int, int] | None:
    """The fixed input size the model file itself declares (``None``: dynamic), read by loading it
    once here: a file no backend loads (a corrupt IR) is a usage error before anything is timed."""
    with backend_class(backend)(path) as loaded:
        return loaded.input_spec.fixed_hw


def artefact_config(
    path: Path,
    index: int,
    settings: Settings,
    label: str | None = None,
    checkpoint_size: tuple[int, int] | None = None,
) -> tuple[Config, dict]:
    """The row of one artefact (``label``: its name in the report, default the file name), its
    worker's job (with its reference's images to time on) written under ``artefacts/<index>`` in the
    work folder, and its facts. A checkpoint (a ``.pth``, ``.safetensors`` or a Depth Anything 3 snapshot
    folder) is a PyTorch FP32 row at ``checkpoint_size`` (default 518x518). A missing file, or one no
    backend loads, is a usage error (exit code 2)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    backend = resolve_backend(path)  # a folder other than a checkpoint snapshot: one line (ModelFileError)
    meta = read_sidecar(path) if path.is_file() else None
    meta = meta or {}
    fixed = model_input_hw(path, backend)
    if backend == "torch":  # a checkpoint: the FP32 network, at the size the other models run at
        meta = {"precision": "fp32", **meta}
        fixed = fixed or checkpoint_size
    found = find_reference(path) if path.is_file() else None
    reference = check_belongs(load_reference(found), path) if found else None
    if reference is not None:
        reference.fits(fixed)
        size = reference.sizes[0]
        images = {n: cv2.cvtColor(i, cv2.COLOR_RGB2BGR) for n, i in zip(reference.names, reference.images)}
    else:  # no reference: timed on the bundled photo at the model's own size, not scored
        from export.metrics import verification_photos

        size = fixed or (518, 518)
        images = verification_photos()
    config = Config(backend, str(meta.get("precision", "?")), tuple(size), lambda: path, variant=label or path.name)
    config.reference = found
    folder = settings.workdir / "artefacts" / str(index)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "images.npz", **images)
    prepare(config, settings, folder / "images.npz", next(iter(images)), f"artefacts/{index}")
    return config, artefact_facts(path, backend, meta, found)


def score_artefact(config: Config) -> None:
    """A timed row's accuracy: its check against its reference (done in its worker)."""
    result = config.result
    verification = result.get("verification")
    if not result.get("end_to_end"):
        return
    if not verification:
        if config.backend == "torch":
            why = "not scored: the checkpoint is the FP32 network the references are made with"
        elif (result.get("info") or {}).get("stream"):
            why = (
                "not scored: no stream reference beside it (every export writes one since 2026-12-07; an older "
                "export.onnx or export.openvino recorded its streamed check in the sidecar)"
            )
        else:
            why = "not scored: no reference beside it"
        result.update(status=STATUS_OK, error=why)
        return
    scores = verification.get("kind_scores") or verification["inputs"]
    result["vs_fp32"] = {k: float(np.mean([i[k] for i in scores])) for k in ("abs_rel", "delta1")}
    result["vs_fp32"]["metric"] = verification.get("kind_metric")
    result["status"] = STATUS_OK if verification["passed"] else STATUS_INVALID
    if not verification["passed"]:
        result["error"] = (
            f"{verification['metric']} {verification['value']:.3g} over its reference's tolerance "
            f"{verification['tolerance']:g}"
        )


def run_artefacts(models: list[Path], args, warmup: int, runs: int, rounds: int) -> int:
    """Time and score ``models``, write the report; 0, or ``EXIT_UNRELIABLE`` with ``--strict``."""

    started = time.perf_counter()
    cpu = detect()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(args.work_dir, warmup, runs, rounds, None, 0, 0.1, cpu)
    settings.profile_calls = 0 if args.no_profile else settings.profile_calls  # ignored before
    settings.throughput = args.throughput
    models = distinct(models)
    labels = row_labels(models)
    configs, facts = [], []
    size = checkpoint_size(models)
    for index, path in enumerate(models):
        try:
            config, fact = artefact_config(path, index, settings, labels[index], size)
        except ValueError as exc:  # a reference or sidecar that cannot be read: a usage error
            raise ModelFileError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from exc
        configs.append(config)
        facts.append(fact)
    ready = [c for c in configs if c.job is not None]
    print(f"timing {len(ready)} artefacts in {rounds} interleaved rounds", file=sys.stderr)
    timed = time_rows(ready, settings)
    for config, fact in zip(configs, facts):
        score_artefact(config)
        model_facts(fact, config.result)
        fact["verification"] = config.result.get("verification")
    rows = [c.row() for c in configs]
    reliability = assess(rows, {}, {"main rounds": timed["machine_state"]}, cpu.native("bf16"))
    rows, best = rank(rows, args.accuracy_budget, reliability["reliable"])
    data = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": MODE,
        "machine": machine_facts(cpu),
        "model": "the artefacts given with --model, as they are (their own weights)",
        "notice": None,
        "images": "each artefact's reference inputs (bundled photographs and held-out calibration images)",
        "calibration": "as each artefact's sidecar records it (below)",
        "timing_image": None,
        "artefacts": facts,
        "settings": {
            "warmup": warmup,
            "runs": runs,
            "rounds": rounds,
            "calls_per_round": settings.calls_per_round,
            "sizes": sorted({tuple(c.size) for c in configs}),
            "quick": args.quick,
        },
        "accuracy_budget": args.accuracy_budget,
        "roofline": {},
        "reliability": reliability,
        "rows": rows,
        "fastest_within_budget": best,
        "size_sweep": [],
        "phases": {k: round(v, 1) for k, v in settings.phases.seconds.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    code = publish(data, {}, args.report_dir, reliability, args.strict)
    failed = [f"{c.variant} ({c.result.get('status')})" for c in configs if c.result.get("status") != STATUS_OK]
    if failed:  # the report is written; the command says the check failed (exit code 1)
        print(f"error: {len(failed)} of {len(configs)} artefacts failed: {', '.join(failed)}", file=sys.stderr)
        return max(code, 1)
    return code


def distinct(models: list[Path]) -> list[Path]:
    """``models`` with each file once (the same file given twice, by any path, is timed once)."""
    seen: dict[Path, Path] = {}
    for path in models:
        key = path.resolve()
        if key in seen:
            print(f"note: {path} is {seen[key]}, given twice: timed once", file=sys.stderr)
            continue
        seen[key] = path
    return list(seen.values())


def row_labels(models: list[Path]) -> list[str]:
    """Each row's name: the file name, or where two files share one, the path as given."""
    names = [path.name for path in models]
    return [path.name if names.count(path.name) == 1 else str(path) for path in models]


def checkpoint_facts(rows: list[dict]) -> dict | None:
    """The model of a checkpoint run, as the first row that ran read it (``model_facts``)."""
    ran = next((row for row in rows if row.get("info")), None)
    if ran is None:
        return None
    fact = {"family": None, "variant": None, "output_kind": None, "extra_outputs": None, "licence": None}
    model_facts(fact, ran)
    return fact


def checkpoint_size(models: list[Path]) -> tuple[int, int]:
    """The size a checkpoint given with ``--model`` runs at: the one fixed size the other models
    share (so the rows compare), else 518x518. Reads each model's sidecar only."""
    sizes = set()
    for path in models:
        meta = read_sidecar(path) if path.is_file() and path.suffix.lower() not in (".pth", ".safetensors") else None
        shape = (meta or {}).get("input_shape")
        if isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
            sizes.add((shape[2], shape[3]))
    return sizes.pop() if len(sizes) == 1 else (518, 518)
