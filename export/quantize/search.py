"""The accuracy budget's method, the same for every INT8 path: which layers go back to float.

A path (ONNX Q/DQ in ``export.quantize.probes``, OpenVINO in ``export.quantize.openvino_int8``)
hands over a ``Prober``: one calibrated INT8 model and a way to measure it on the held-out images
with any set of its layers back in float, without quantizing again. Then, while over budget:

1. LayerNorm-fed linears against the rest: when quantizing only the former costs more, the
   path's outlier migration (SmoothQuant) is turned on, which needs a new calibrated model.
2. Sensitivity: each group of layers (a transformer block, a DPT pyramid level) alone in INT8,
   the rest float; then, worst group first, each of its layers alone in INT8, and the layers that
   hurt at least half as much as its worst go back to float one at a time, until the budget holds.
3. Otherwise the export is refused; every probe is in the report either way, and the smallest
   set of float layers any probe met the budget with is named as a ``--float-layers`` value.

Every probe is logged as it ends (which loop, step k of at most N, its error, time so far).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# An unreachable budget ends after this many layers went back to float, in minutes, with the numbers.
MAX_REVERTS = 20
# DPT modules of one pyramid level: projects.i and resize_layers.i feed layer{i+1}_rn and refinenet{i+1}.
# Depth Anything 3's graphs name the network inside its wrapper (``/net/...``) and its DPT ``head``.
_DPT = re.compile(r"^/?(?:net/)?(depth_head|head)/(?:(?:projects|resize_layers)\.(\d+)|layer(\d+)_rn|refinenet(\d+))/")


class Prober(Protocol):
    """One calibrated INT8 model of a path, measured with any of its layers in float."""

    layers: list[str]  # the quantized layers, ONNX node names in graph order

    def error(self, floats: frozenset[str]) -> float:
        """AbsRel on the held-out images with ``floats`` back in float (the rest as quantized)."""
        ...


def group_of(node: str) -> str:
    """``/pretrained/blocks.3/attn/qkv/MatMul`` -> ``pretrained/blocks.3``; DPT layers by pyramid level
    (``/depth_head/refinenet2/...`` -> ``depth_head/level2``); a DA3 graph's ``/net/`` prefix dropped
    (``/net/pretrained/blocks.3/...`` -> ``pretrained/blocks.3``, ``/net/head/refinenet2/...`` ->
    ``head/level2``)."""
    match = _DPT.match(node)
    if match:
        head, index = match.group(1), match.group(2)
        level = int(index) + 1 if index is not None else int(match.group(3) or match.group(4))
        return f"{head}/level{level}"
    parts = node.strip("/").split("/")
    if parts[0] == "net" and len(parts) > 2:
        parts = parts[1:]
    return "/".join(parts[:2])


@dataclass
class Probe:
    step: int
    loop: str  # plain, smoothing, groups, layers, reverts
    label: str
    error: float
    smoothed: bool
    floats: frozenset[str]  # layers in float besides those the prober's model has in float already
    layers: list[str]  # the prober's quantized layers, in graph order
    seconds: float

    def float_layers(self) -> list[str]:
        return [n for n in self.layers if n in self.floats]

    def record(self) -> dict:
        """For the report: the float layers by name, or, when most are float, the INT8 ones."""
        entry = {"step": self.step, "loop": self.loop, "probe": self.label, "error": self.error}
        entry["smoothed"] = self.smoothed
        if len(self.floats) * 2 > len(self.layers):
            entry["int8_only"] = [n for n in self.layers if n not in self.floats]
        else:
            entry["float_layers"] = self.float_layers()
        entry["seconds"] = round(self.seconds, 1)
        return entry


@dataclass
class Outcome:
    prober: Prober
    floats: list[str]  # reverted to float by the search, in the order they went
    error: float
    plain_error: float
    smoothed: bool
    met: bool
    record: dict = field(default_factory=dict)


class Search:
    """Runs the method on probers from ``make(smoothed)``, whose models have the user's ``fixed``
    layers in float already, logging every probe."""

    def __init__(
        self,
        make: Callable[[bool], Prober],
        budget: float,
        log: Callable[[str], object] = print,
        fixed: tuple[str, ...] = (),
    ) -> None:
        self.make, self.budget, self.log, self.fixed = make, budget, log, fixed
        self.started = time.perf_counter()
        self.probes: list[Probe] = []

    def measure(self, prober: Prober, floats, smoothed: bool, loop: str, label: str) -> float:
        floats = frozenset(floats)
        error = prober.error(floats)
        elapsed = time.perf_counter() - self.started
        self.probes.append(Probe(len(self.probes) + 1, loop, label, error, smoothed, floats, prober.layers, elapsed))
        self.log(f"  [{_clock(elapsed)}] {label}: AbsRel {error:.4f}")
        return error

    def run(self, smooth_mode: str, ln_fed: set[str]) -> Outcome:
        smoothed = smooth_mode == "on"
        prober = self.make(smoothed)
        record: dict = {}
        label = "all layers INT8" + (f" but the {len(self.fixed)} --float-layers" if self.fixed else "")
        error = plain = self.measure(prober, (), smoothed, "plain", label + _migrated(smoothed))
        self.log(f"INT8 error on the held-out images: AbsRel {error:.4f} (budget {self.budget})")
        if smoothed:
            record["smoothing"] = {"used": True, "why": "asked (--smooth on)"}
        if error > self.budget and smooth_mode == "auto":
            ln = ln_fed & set(prober.layers)
            if ln:
                others = set(prober.layers) - ln
                self.log("over budget: do the LayerNorm-fed linears cause it? (2 probes)")
                ln_error = self.measure(prober, others, False, "smoothing", "only the LayerNorm-fed linears in INT8")
                rest_error = self.measure(prober, ln, False, "smoothing", "all but the LayerNorm-fed linears in INT8")
                record["smoothing"] = {"ln_fed_only_error": ln_error, "others_only_error": rest_error, "used": False}
                if ln_error > rest_error:
                    self.log("they do: migrating their outliers into the weights (SmoothQuant) and calibrating again")
                    candidate = self.make(True)
                    smooth_error = self.measure(candidate, (), True, "smoothing", "all layers INT8, outliers migrated")
                    record["smoothing"]["error"] = smooth_error
                    if smooth_error < error:
                        prober, smoothed, error = candidate, True, smooth_error
                        record["smoothing"]["used"] = True
                else:
                    self.log("they do not: no outlier migration")
        floats: list[str] = []
        if error > self.budget:
            error = self._revert(prober, smoothed, floats, record, error)
        return Outcome(prober, floats, error, plain, smoothed, error <= self.budget, record)

    def _revert(self, prober: Prober, smoothed: bool, floats: list[str], record: dict, error: float) -> float:
        layers = prober.layers
        groups: dict[str, list[str]] = {}
        for name in layers:
            groups.setdefault(group_of(name), []).append(name)
        self.log(f"over budget: measuring {len(groups)} groups of layers, each alone in INT8 ...")
        warm = getattr(prober, "warm", None)
        if warm is not None:  # a prober may prepare for probes that keep little in INT8
            warm([set(names) for names in groups.values()])
        sensitivity = {}
        for k, (group, names) in enumerate(groups.items(), 1):
            label = f"group {k} of {len(groups)}: only {group} ({len(names)} layers) in INT8"
            sensitivity[group] = self.measure(prober, set(layers) - set(names), smoothed, "groups", label)
        ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
        record["sensitivity"] = [{"group": g, "layers": len(groups[g]), "error_alone": sensitivity[g]} for g in ranked]
        self.log(_table(record["sensitivity"]))
        limit = min(MAX_REVERTS, len(layers) - 1)  # at least one layer stays INT8
        steps = record["reverts"] = []
        for group in ranked:
            # Within the group, the layers that hurt most alone go back first, and only those that
            # hurt at least half as much as its worst: the others would cost speed for nothing.
            order = groups[group]
            if len(order) > 1:
                alone = {}
                for k, name in enumerate(order, 1):
                    label = f"{group} layer {k} of {len(order)}: only {name} in INT8"
                    alone[name] = self.measure(prober, set(layers) - {name}, smoothed, "layers", label)
                worst = max(alone.values())
                order = sorted((n for n in order if alone[n] >= worst / 2), key=alone.get, reverse=True)
            for name in order:
                if len(floats) == limit:
                    return error
                floats.append(name)
                label = f"step {len(floats)} of at most {limit}: {name} back to float"
                error = self.measure(prober, floats, smoothed, "reverts", label)
                steps.append({"reverted": name, "error": error})
                if error <= self.budget:
                    return error
        return error

    def report(self, outcome: Outcome) -> dict:
        """The record of the whole search: every probe, and, when the budget was missed, the
        smallest set of float layers (the ``fixed`` ones included) any probe met it with."""
        data = {
            "plain_error": outcome.plain_error,
            **outcome.record,
            "probes": [p.record() for p in self.probes],
            "seconds": round(time.perf_counter() - self.started, 1),
        }
        if not outcome.met:
            good = [p for p in self.probes if p.error <= self.budget]
            best = min(good, key=lambda p: (len(p.floats), p.error)) if good else None
            data["would_meet_budget"] = (
                {
                    "float_layers": [*self.fixed, *best.float_layers()],
                    "smooth": "on" if best.smoothed else "off",
                    "error": best.error,
                    "probe": best.step,
                }
                if best
                else None
            )
        return data


def suggestion(would: dict | None, report: str) -> str:
    """The refusal's sentence on what would have met the budget, as options to pass."""
    if not would:
        return f"no probe met the budget (every probe is in {report})"
    names = would["float_layers"]
    shown = ",".join(names) if len(names) <= 12 else f"<the {len(names)} names under would_meet_budget in {report}>"
    return (
        f"probe {would['probe']} met it (AbsRel {would['error']:.4f}) with --smooth {would['smooth']} "
        f"--float-layers {shown}"
    )


def _migrated(smoothed: bool) -> str:
    return ", outliers migrated" if smoothed else ""


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _table(rows: list[dict]) -> str:
    lines = ["  | layer group | INT8 layers | AbsRel with only it in INT8 |", "  |---|---|---|"]
    lines += [f"  | {r['group']} | {r['layers']} | {r['error_alone']:.4f} |" for r in rows]
    return "\n".join(lines)
