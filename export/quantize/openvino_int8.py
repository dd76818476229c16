"""OpenVINO INT8 with NNCF, held to the accuracy budget by the project's own method.

NNCF (post-training quantization, mixed preset, transformer model type) calibrates the IR; the
method of ``export.quantize.search`` then decides, measuring on the compiled model with f32
inference (this CPU would otherwise run the float parts in bf16, and the measurement would be
the CPU's choice, not the artefact's), whether NNCF's SmoothQuant is on and which layers go back
to float. Its choice is NNCF's own vocabulary: ``smooth_quant_alphas`` and an ignored scope.

Probes do not quantize again: a layer goes back to float by bypassing the FakeQuantize ops that
only it reads (through quantize-agnostic ops such as Reshape and Transpose, as NNCF places them)
and restoring the bias NNCF's bias correction changed, in the one model NNCF quantized with its
weights still behind FakeQuantize (``compress_weights`` off, as NNCF's own accuracy control
does). That is the model NNCF builds with those layers in its ignored scope (tests compare the
two) as long as the settings below keep NNCF's choices independent of the ignored scope:
SmoothQuant ignores the scope anyway, and the overflow fix is on for every layer
(``OverflowFix.ENABLE``: 7-bit weights). NNCF's default applies it to the first quantized
convolutions only, which with the patch embedding in float are the DPT's, and which those are
would change with every layer put in float. On every layer it also makes the artefact compute
the same numbers on CPUs without VNNI, where 8-bit weights can saturate AVX2's 16-bit sums.

``--accuracy-method nncf`` uses ``nncf.quantize_with_accuracy_control`` instead.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path

import numpy as np

from commands.runner import stage

from ..errors import ExportError
from ..graph import load_onnx
from ..metrics import Int8Measure, OnnxRuntimeRunner, int8_measure
from .budget import check_float_layers, quant_report_path, write_report
from .nncf_log import nncf_quiet
from .options import Int8Options
from .qdq import DEFAULT_KEEP_FP, QUANTIZED_OPS
from .search import Search, suggestion
from .smooth import find_sites

# Settings of every NNCF call; ``settings`` adds SmoothQuant and the weights' form.
PRESET, MODEL_TYPE = "mixed", "transformer"
# NNCF's accuracy control: each iteration puts one more layer group back in float and validates;
# bounded, so an unreachable budget ends in minutes with the numbers instead of trying every layer.
MAX_RESTORE_STEPS = 20


def compile_f32(ov, model):
    from runtime.backends.openvino import openvino_core

    return openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def layer_names(model, onnx_model) -> dict[str, str]:
    """OpenVINO op name -> the ONNX node it came from, for the ops NNCF may quantize.

    The ONNX frontend keeps node names, except that a Conv or ConvTranspose with a bias becomes the
    op (``<name>/WithoutBiases``, or an automatic name) followed by an Add named ``<name>``."""
    nodes = {node.name for node in onnx_model.graph.node}
    names = {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name in nodes:
            names[name] = name
            continue
        users = list(op.output(0).get_target_inputs()) if op.get_output_size() == 1 else []
        if len(users) == 1 and users[0].get_node().get_type_name() == "Add":
            bias = users[0].get_node().get_friendly_name()
            if bias in nodes:
                names[name] = bias
    return names


def ov_names(onnx_names, names: dict[str, str]) -> list[str]:
    """The OpenVINO ops of ``onnx_names`` (ONNX node names), for NNCF's ignored scope."""
    wanted = set(onnx_names)
    return sorted(op for op, node in names.items() if node in wanted)


class QuantizerWalk:
    """Which layers read a tensor, through the ops a quantizer moves through (NNCF's own list of
    quantize-agnostic ops, plus Concat as its accuracy control adds), skipping ShapeOf: the paths
    along which NNCF places its FakeQuantize ops."""

    def __init__(self, names: dict[str, str]) -> None:
        from nncf.openvino.graph.metatypes.groups import QUANTIZE_AGNOSTIC_OPERATIONS, SHAPEOF_OPERATIONS
        from nncf.openvino.graph.metatypes.openvino_metatypes import OVConcatMetatype, get_node_metatype

        self.names, self.metatype = names, get_node_metatype
        self.agnostic, self.shapeof = set(QUANTIZE_AGNOSTIC_OPERATIONS) | {OVConcatMetatype}, set(SHAPEOF_OPERATIONS)

    def output(self, output) -> frozenset[str]:
        return frozenset().union(*(self.input(target) for target in output.get_target_inputs()))

    def input(self, target) -> frozenset[str]:
        node = target.get_node()
        kind = self.metatype(node)
        if kind in self.shapeof:
            return frozenset()
        if kind in self.agnostic:
            return frozenset().union(*(self.output(out) for out in node.outputs()))
        name = node.get_friendly_name()
        return frozenset({self.names.get(name, name)})

    def quantizers(self, model) -> dict[str, frozenset[str]]:
        """FakeQuantize name -> the layers (ONNX names) that read it, in graph order."""
        return {
            op.get_friendly_name(): self.output(op.output(0))
            for op in model.get_ordered_ops()
            if op.get_type_name() == "FakeQuantize"
        }


class OpenVinoProbes:
    """A ``search.Prober`` over ``quantized`` (NNCF's model of ``float_model``, weights behind
    FakeQuantize); ``requantize(floats)`` is NNCF with ``floats`` ignored too, for the rare layer
    whose FakeQuantize it shares with an INT8 layer through a common Reshape or Transpose."""

    def __init__(
        self, ov, float_model, quantized, names, held, references, requantize, measure: Int8Measure | None = None
    ) -> None:
        self.ov, self.quantized, self.names = ov, quantized, names
        self.held, self.references, self.requantize = held, references, requantize
        self.measure = measure or Int8Measure()
        self.walk = QuantizerWalk(names)
        self.fq_layers = self.walk.quantizers(quantized)
        order = dict.fromkeys(n for layers in self.fq_layers.values() for n in sorted(layers))
        position = {op.get_friendly_name(): i for i, op in enumerate(quantized.get_ordered_ops())}
        first = {}
        for op_name, node in names.items():
            first[node] = min(first.get(node, len(position)), position.get(op_name, len(position)))
        self.layers = sorted(order, key=lambda n: first.get(n, len(position)))
        self.biases = self._changed_biases(float_model)
        self._last = None

    def _changed_biases(self, float_model) -> dict[str, tuple[str, int, np.ndarray]]:
        """Layer -> (bias Add, input, float value) where NNCF's bias correction changed the bias."""
        original = {op.get_friendly_name(): op for op in float_model.get_ops() if op.get_type_name() == "Add"}
        changed = {}
        for op in self.quantized.get_ops():
            name = op.get_friendly_name()
            if op.get_type_name() != "Add" or name not in original:
                continue
            for port, (now, before) in enumerate(zip(op.inputs(), original[name].inputs(), strict=True)):
                a, b = now.get_source_output().get_node(), before.get_source_output().get_node()
                if a.get_type_name() == b.get_type_name() == "Constant" and not np.array_equal(
                    a.get_data(), b.get_data()
                ):
                    layer = op.input(1 - port).get_source_output().get_node().get_friendly_name()
                    changed[self.names.get(layer, layer)] = (name, port, b.get_data().copy())
        return changed

    def build(self, floats: frozenset[str]):
        """The quantized model with ``floats`` in float; ``None`` where only NNCF can say."""
        if self._last is not None and self._last[0] == floats:
            return self._last[1]
        model = self.quantized.clone()
        ops = {op.get_friendly_name(): op for op in model.get_ops()}
        for name, layers in self.fq_layers.items():
            if not layers & floats:
                continue
            fq = ops[name]
            source = fq.input(0).get_source_output()
            for target in list(fq.output(0).get_target_inputs()):
                reached = self.walk.input(target)
                if reached <= floats:
                    target.replace_source_output(source)
                elif reached & floats:
                    return None
        for layer in floats & self.biases.keys():
            add, port, value = self.biases[layer]
            ops[add].input(port).replace_source_output(self.ov.op.Constant(value).output(0))
        model.validate_nodes_and_infer_types()
        self._last = (floats, model)
        return model

    def model(self, floats: frozenset[str]):
        built = self.build(floats)
        return built if built is not None else self.requantize(floats)

    def error(self, floats: frozenset[str]) -> float:
        return self.measure(run_all_outputs(compile_f32(self.ov, self.model(floats)), self.held), self.references)

    def parts(self, floats: frozenset[str]) -> dict:
        """The error of each output (depth, and each extra output the measure holds)."""
        outputs = run_all_outputs(compile_f32(self.ov, self.model(floats)), self.held)
        return self.measure.parts(outputs, self.references)


def run_all_outputs(compiled, batches) -> list[list[np.ndarray]]:
    """Every output of a compiled model (in the graph's order, depth first) for each batch."""
    found = []
    for batch in batches:
        result = compiled(batch)
        found.append([np.asarray(result[index]) for index in range(len(compiled.outputs))])
    return found


def settings(nncf, smoothed: bool, compress_weights: bool):
    from nncf.openvino.quantization.backend_parameters import BackendParameters
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    alphas = AdvancedSmoothQuantParameters() if smoothed else AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
    return AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix.ENABLE,
        smooth_quant_alphas=alphas,
        backend_params={BackendParameters.COMPRESS_WEIGHTS: compress_weights},
    )


class Nncf:
    """NNCF INT8 of one converted ``model`` (OpenVINO op -> ONNX node: ``names``) calibrated on
    ``images``, with the ONNX nodes ``fixed`` always in float (NNCF's ignored scope)."""

    def __init__(self, model, images, names: dict[str, str], fixed) -> None:
        from commands.errors import require
        from runtime.backends.openvino import telemetry_off

        with telemetry_off():
            self.nncf = require("nncf", "openvino", "NNCF")
        self.model, self.names, self.fixed = model, names, ov_names(fixed, names)
        self.dataset = self.nncf.Dataset(list(images), lambda sample: sample)
        self.samples = len(images)

    def quantize(self, smoothed: bool, compress: bool, floats=frozenset(), restore: dict | None = None):
        """With ``floats`` (ONNX names) in float too; ``restore``: NNCF's accuracy control's arguments.
        NNCF makes and frees OpenVINO Cores of its own: see ``runtime.backends.signal_stack``."""
        from runtime.backends.openvino import telemetry_off
        from runtime.backends.signal_stack import alternate_stack_kept

        nncf = self.nncf
        common = {
            "preset": nncf.QuantizationPreset.MIXED,
            "model_type": nncf.ModelType.TRANSFORMER,
            "subset_size": self.samples,
            "ignored_scope": nncf.IgnoredScope(names=self.fixed + ov_names(floats, self.names), validate=False),
        }
        parameters = settings(nncf, smoothed, compress)
        if restore is None:
            with stage("quantizing with NNCF"), telemetry_off(), nncf_quiet(), alternate_stack_kept():
                return nncf.quantize(self.model.clone(), self.dataset, advanced_parameters=parameters, **common)
        with stage("NNCF's accuracy control"), telemetry_off(), alternate_stack_kept():  # its info lines: progress
            return nncf.quantize_with_accuracy_control(
                self.model.clone(), self.dataset, advanced_quantization_parameters=parameters, **restore, **common
            )


def describe(smoothed: bool, ignored: list[str], method: str) -> dict:
    return {
        "tool": "nncf",
        "preset": PRESET,
        "model_type": MODEL_TYPE,
        "smooth_quant": "NNCF default alphas" if smoothed else "off",
        "overflow_fix": "enable (7-bit weights)",
        "ignored_scope": ignored,
        "accuracy_method": method,
    }


def kept_in_float(names: dict[str, str], options: Int8Options) -> list[str]:
    """The ONNX nodes in float before any measurement: the default and ``--keep-fp`` patterns
    (as on the ONNX path), then ``--float-layers``."""
    patterns = DEFAULT_KEEP_FP + tuple(options.keep_fp)
    nodes = sorted(set(names.values()))
    keep = [n for n in nodes if any(fnmatch.fnmatchcase(n, p) for p in patterns) and n not in options.float_layers]
    return [*keep, *options.float_layers]


def checked_layer_names(model, onnx_model, float_layers: tuple[str, ...]) -> dict[str, str]:
    """``layer_names``, with each of ``float_layers`` (``--float-layers``: ONNX node names) checked
    to be a layer NNCF quantizes: a Sqrt or Reshape never is (as on the Q/DQ path)."""
    names = layer_names(model, onnx_model)
    kinds = (*QUANTIZED_OPS, "ConvTranspose", "Resize")  # NNCF also quantizes the head's upsampling layers
    quantizable = {node.name for node in onnx_model.graph.node if node.op_type in kinds}
    check_float_layers(float_layers, sorted(set(names.values()) & quantizable), "OpenVINO")
    return names


def quantize_openvino(ov, model, onnx_path: Path, images, output: Path, options: Int8Options) -> tuple:
    """NNCF INT8 of ``model`` (converted from ``onnx_path``) calibrated on ``images`` (a
    ``HeldOutSplit`` when ``options.budget`` is set); returns the model and the quantization record.
    With a budget, ``<output>.quant.json`` is written whatever the outcome."""
    onnx_model = load_onnx(onnx_path)
    names = checked_layer_names(model, onnx_model, options.float_layers)
    nncf = Nncf(model, images, names, kept_in_float(names, options))
    if options.budget is None:
        smoothed = options.smooth != "off"  # nothing measured to decide by: NNCF's default for transformers
        return nncf.quantize(smoothed, True), describe(smoothed, nncf.fixed, "none (--accuracy-budget off)")
    held = images.held_out_batches()
    measure = int8_measure(onnx_path)
    with stage("running the FP32 model on the held-out images"):
        runner = OnnxRuntimeRunner(onnx_path)
        references = [runner.outputs(batch) for batch in held]
    record = {
        "budget": options.budget,
        "metric": measure.metric,
        **({"extra_outputs": list(measure.extras)} if measure.extras else {}),
        "method": options.accuracy_method,
        "target": "openvino",
        "calibration_images": len(images),
        "held_out_images": len(held),
    }
    if options.accuracy_method == "nncf":
        final, found = nncf_accuracy_control(ov, nncf, held, references, options.budget, measure)
        smoothed = True
    else:

        def make(smoothed: bool) -> OpenVinoProbes:
            def requantize(floats):
                return nncf.quantize(smoothed, False, floats)

            quantized = nncf.quantize(smoothed, False)
            return OpenVinoProbes(ov, model, quantized, names, held, references, requantize, measure)

        search = Search(make, options.budget, fixed=options.float_layers)
        ln_fed = {m.name for s in find_sites(onnx_model) for m in s.matmuls}
        with stage("measuring INT8 layers against the held-out images"):
            outcome = search.run(options.smooth, ln_fed)
        found = {**search.report(outcome), "error": outcome.error, "accepted": outcome.met}
        found.update(reverted=outcome.floats, int8_layers=len(outcome.prober.layers) - len(outcome.floats))
        final = outcome.prober.model(frozenset(outcome.floats)) if outcome.met else None
        found["errors"] = outcome.prober.parts(frozenset(outcome.floats))  # depth and each extra output
        smoothed = outcome.smoothed
    reverted = found["reverted"]
    record.update(found, float_layers=[*options.float_layers, *reverted], smoothed=smoothed)
    report = quant_report_path(output)
    write_report(report, record)
    if not record["accepted"]:
        hint = (
            suggestion(record["would_meet_budget"], str(report))
            if options.accuracy_method == "sensitivity"
            else "NNCF's accuracy control reports none of its probes; --accuracy-method sensitivity reports each"
        )
        raise ExportError(
            f"OpenVINO INT8 misses the accuracy budget: {measure.label()} {record['error']:.4f} > {options.budget} "
            "with "
            f"{len(reverted)} layers back in float (plain INT8 {record['plain_error']:.4f}); {hint}; nothing was "
            "written. Raise --accuracy-budget, or use FP16"
        )
    from openvino._offline_transformations import compress_quantize_weights_transformation

    compress_quantize_weights_transformation(final)  # INT8 weights in the IR, as NNCF itself stores them
    quantization = describe(smoothed, nncf.fixed + ov_names(reverted, names), options.accuracy_method)
    keys = ("budget", "metric", "method", "error", "plain_error", "int8_layers", "float_layers", "smoothed")
    quantization["accuracy"] = {**{k: record[k] for k in keys}, "held_out_images": len(held)}
    if "errors" in record:
        quantization["accuracy"]["errors"] = record["errors"]
    return final, quantization


def nncf_accuracy_control(ov, nncf: Nncf, held, references, budget: float, measure=None) -> tuple:
    """NNCF's own accuracy control (the same settings and ignored scope, SmoothQuant on): its
    ranking, layers back in float until the error (``measure``) against ONNX Runtime FP32 on the
    held-out images drops by at most ``budget``."""
    from nncf import Dataset
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    started = time.perf_counter()
    measure = measure or Int8Measure()

    def validate(compiled, items) -> tuple[float, list[float]]:
        per_image = [-measure(run_all_outputs(compiled, [batch]), [ref]) for batch, ref in items]
        return float(np.mean(per_image)), per_image

    def error_of(candidate) -> float:
        return -validate(compile_f32(ov, candidate), zip(held, references, strict=True))[0]

    walk = QuantizerWalk(nncf.names)
    plain = nncf.quantize(True, True)
    found = {"plain_error": error_of(plain), "reverted": []}
    probes = [{"step": 1, "loop": "plain", "probe": "NNCF defaults, all layers INT8", "error": found["plain_error"]}]
    final = plain
    if found["plain_error"] > budget:
        restore = {
            "validation_dataset": Dataset(list(zip(held, references, strict=True)), lambda item: item[0]),
            "validation_fn": validate,
            "max_drop": budget,
            "advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(
                max_num_iterations=MAX_RESTORE_STEPS, num_ranking_workers=1
            ),
        }
        final = nncf.quantize(True, True, restore=restore)
        now = set().union(*walk.quantizers(final).values())
        before = dict.fromkeys(n for layers in walk.quantizers(plain).values() for n in sorted(layers))
        found["reverted"] = [n for n in before if n not in now]
    found["error"] = error_of(final)
    if final is not plain:
        label = f"NNCF's accuracy control: {len(found['reverted'])} layers back in float"
        probes.append({"step": 2, "loop": "reverts", "probe": label, "error": found["error"]})
    found.update(probes=probes, accepted=found["error"] <= budget, would_meet_budget=None)
    found["int8_layers"] = len(set().union(*walk.quantizers(final).values()))
    found["seconds"] = round(time.perf_counter() - started, 1)
    return final, found
