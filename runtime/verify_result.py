"""What ``runtime.reference.score`` finds: each reference input's numbers, and the one number the
reference's tolerance holds.

An INT8 artefact's budget is measured by its export on the images held out of calibration; its
reference holds those images and, besides them, bundled photographs. A reference that marks the
inputs its budget was measured on (``"budget": true`` in their entries of ``meta["inputs"]``)
holds the budget's metric, mean over those inputs, to the budget: the number the export accepted,
so an artefact the export accepted passes its own reference check on the same machine with the
same arithmetic. Its other inputs (the photographs, never part of the budget) are scored and
reported, and each is held to ``BROKEN_INT8_TOLERANCE``, the bound that tells a broken artefact
from a working one. A reference that marks no input (written before the marks existed, or by an
export that measured nothing) is judged as it always was: the mean over all its inputs.

Python 3.8 clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .accuracy import short_name

# Aligned AbsRel on inputs that no budget was measured on: tells a broken INT8 artefact (a flipped
# scale, a saturated layer: AbsRel 0.5 and more) from a working one, says nothing of its precision.
# Also the whole bound of an export made with --accuracy-budget off ("measured": false).
BROKEN_INT8_TOLERANCE = 0.2


@dataclass
class InputCheck:
    name: str
    size: tuple[int, int]
    value: float  # the reference's metric on this input
    max_rel_std: float
    abs_rel: float
    delta1: float
    in_budget: bool = False  # one of the inputs the INT8 budget was measured on


def _worst(values: list[float]) -> float:
    return float(max(values, key=lambda v: np.inf if np.isnan(v) else v)) if values else float("nan")


@dataclass
class VerifyResult:
    """An artefact's outputs against its reference: per input, and the number the tolerance holds."""

    metric: str
    tolerance: float
    checks: list[InputCheck]
    value: float  # MAX_REL_STD: the worst input; an INT8 metric: the mean over the judged inputs
    reference: str = ""
    ran: dict[str, Any] = field(default_factory=dict)  # backend, device, precision that ran
    seconds: float = 0.0
    note: str = ""  # why the tolerance is not the artefact's own
    other_file: str = ""  # the reference records another file's digest (``check_belongs``)
    abs_rel_metric: str = ""  # what each input's ``abs_rel`` is (``Reference.abs_rel_metric``)
    others_tolerance: float | None = None  # the bound of inputs outside the budget, where it has some

    @property
    def budget_checks(self) -> list[InputCheck]:
        """The inputs ``value`` is taken over (all of them, where the reference marks none)."""
        marked = [c for c in self.checks if c.in_budget]
        return marked if self.others_tolerance is not None else self.checks

    @property
    def others(self) -> list[InputCheck]:
        """The inputs held only to ``others_tolerance`` (none where the reference marks none)."""
        return [c for c in self.checks if not c.in_budget] if self.others_tolerance is not None else []

    @property
    def others_value(self) -> float:
        return _worst([c.value for c in self.others])

    @property
    def passed(self) -> bool:
        within = self.value <= self.tolerance  # NaN fails
        if self.others and self.others_tolerance is not None:
            within = within and self.others_value <= self.others_tolerance
        return bool(within)

    def summary(self) -> str:
        verdict = "within" if self.value <= self.tolerance else "OVER"
        if self.others_tolerance is None:
            return (
                f"{self.metric} {self.value:.3g} ({verdict} the tolerance {self.tolerance:g}) "
                f"on {len(self.checks)} reference inputs"
            )
        text = (
            f"{self.metric} {self.value:.3g} ({verdict} the budget {self.tolerance:g}) on the "
            f"{len(self.budget_checks)} held-out inputs the budget was measured on"
        )
        if self.others:
            other = "within" if self.others_value <= self.others_tolerance else "OVER"
            text += (
                f"; worst of {len(self.others)} photographs outside the budget {self.others_value:.3g} "
                f"({other} the broken-artefact bound {self.others_tolerance:g})"
            )
        return text

    def lines(self) -> list[str]:
        return [
            f"  {c.name} {c.size[0]}x{c.size[1]}: max|a-b|/std {c.max_rel_std:.3g}, {self.abs_rel_name} {c.abs_rel:.3g}"
            + (" (budget)" if c.in_budget and self.others_tolerance is not None else "")
            for c in self.checks
        ]

    @property
    def abs_rel_name(self) -> str:
        return short_name(self.abs_rel_metric) if self.abs_rel_metric else "aligned AbsRel"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "abs_rel_metric": self.abs_rel_metric,
            "tolerance": self.tolerance,
            "value": self.value,
            "passed": self.passed,
            "others_tolerance": self.others_tolerance,
            "others_value": self.others_value if self.others else None,
            "reference": self.reference,
            "ran": self.ran,
            "seconds": round(self.seconds, 3),
            "note": self.note,
            "inputs": [
                {
                    "name": c.name,
                    "size": list(c.size),
                    "max_rel_std": c.max_rel_std,
                    "abs_rel": c.abs_rel,
                    "delta1": c.delta1,
                    "in_budget": c.in_budget,
                }
                for c in self.checks
            ],
        }


def judged_value(checks: list[InputCheck], int8: bool) -> tuple[float, float | None]:
    """The number the tolerance holds and the bound of the inputs outside the budget (``None``:
    every input is judged by the tolerance). FP32/FP16: the worst input. INT8: the mean over the
    inputs the budget was measured on where the reference marks them, else over all inputs."""
    values = [c.value for c in checks]
    if not int8:
        return _worst(values), None
    marked = [c.value for c in checks if c.in_budget]
    if not marked:
        return float(np.mean(values)), None  # a reference written before the marks: judged as before
    return float(np.mean(marked)), BROKEN_INT8_TOLERANCE


def unmeasured_note(meta: dict[str, Any]) -> str:
    """What the reference of an artefact whose accuracy was not measured checks, or ``""``."""
    if meta.get("measured", True):
        return ""
    return (
        f"unmeasured {meta.get('precision')} export (--accuracy-budget off): its reference checks only that it is "
        f"not broken ({meta.get('metric', '').split(',')[0]} <= {float(meta.get('tolerance', 0)):g} on photographs), "
        "not its accuracy; export with --accuracy-budget to measure it"
    )


def worst_input(result: VerifyResult) -> str:
    """The name of the input farthest from the reference (a NaN output counts as farthest)."""
    return max(result.checks, key=lambda c: np.inf if np.isnan(c.value) else c.value).name
