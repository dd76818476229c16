"""Layers of a Q/DQ INT8 ONNX model back in float, by removing their Q/DQ pairs from the one
quantized graph instead of quantizing again.

ONNX Runtime's quantizer (``quantize_static``, QDQ format) quantizes a tensor once: one
QuantizeLinear -> DequantizeLinear pair whose output every reader of the tensor takes, quantized
node or not (``QDQQuantizer._add_qdq_pair_for_activation`` replaces the input of all nodes). A
tensor gets its pair when a quantized node asks for it: its activation input and weights, its
bias when biases are quantized, and its output unless that is excluded. With the same ranges, the
model quantized with a set of layers also in float is therefore the full model without the pairs
that only those layers asked for, reading the float tensor instead (for INT8-valued weights, the
float weights of the source model). ``QdqProbes.build`` computes it; the tests compare its
outputs with a re-quantization's.

Most probes keep only a few layers in INT8: everything before them computes exactly what the FP32
model computes. ``QdqProbes.warm`` runs the float model once on the held-out images and keeps the
tensors where such probes start to differ; each probe then runs only the part of the graph after
the kept tensors it does not change (the same kernels on the same values: the same numbers, to
rounding where a fusion crosses the cut).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.sky import SKY, runtime_sky_step, sky_to_far

from ..graph import PROTOBUF_LIMIT, Graph, load_onnx, save_onnx
from ..metrics import Int8Measure, OnnxRuntimeRunner

# The most held-out activations ``warm`` keeps in memory (vits at 518x518 needs about 0.3 GiB).
CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class QdqPair:
    nodes: tuple[int, ...]  # indices in the graph's node list: (Q, DQ), or (DQ,) over an INT8 initializer
    output: str  # what the readers read: the DequantizeLinear's output
    tensor: str  # the float tensor it quantizes
    wanted: frozenset[str]  # the quantized layers that asked for it


class QdqProbes:
    """A ``search.Prober`` over the Q/DQ model at ``quantized`` (calibrated from ``source``), whose
    quantized layers are ``layers``; measured with ONNX Runtime on ``held`` against ``references``."""

    def __init__(
        self,
        quantized: Path,
        source: Path,
        layers: list[str],
        target: str,
        held: list[np.ndarray],
        references: list[np.ndarray],
        workdir: Path,
        as_written: bool | None = None,
        measure: Int8Measure | None = None,
    ) -> None:
        """``references``: per held-out image its FP32 depth, or every FP32 output (graph order)
        where ``measure`` holds extra outputs too."""
        self.path, self.layers, self.held, self.references = quantized, list(layers), held, references
        self.measure = measure or Int8Measure()
        self.model = load_onnx(quantized)
        # The TensorRT target's pairs run as written (float simulation, the same on every CPU); the
        # cpu target as ONNX Runtime runs it, unless ``as_written`` says this CPU computes another
        # arithmetic than the target's. Outputs are quantized only for the cpu target.
        self.as_written = target == "tensorrt" if as_written is None else as_written
        self.source = load_onnx(source)
        self.pairs = self._pairs(self.source, outputs_quantized=target == "cpu")
        present = {init.name for init in self.model.graph.initializer}
        self.floats = {i.name: i for i in self.source.graph.initializer if i.name not in present}
        self.workdir = workdir
        self.cache: dict[str, list[np.ndarray]] = {}  # FP32 activations per held-out image
        self.fixed = Graph(self.model).image_independent()
        # A graph that leaves the DA3 sky step to the runtime (export.trt's sky-less graph): its
        # probes' depth gets the step, as the references' (``OnnxRuntimeRunner``) and the runtime's do.
        meta = {p.key: p.value for p in self.source.metadata_props}
        names = [o.name for o in self.model.graph.output]
        self.sky = names.index(SKY) if runtime_sky_step(meta) and SKY in names else None
        self._last: tuple[frozenset[str], object] | None = None

    def _pairs(self, source_model, outputs_quantized: bool) -> list[QdqPair]:
        nodes = list(self.model.graph.node)
        producer = {out: node for node in nodes for out in node.output}
        readers: dict[str, list] = defaultdict(list)
        for node in nodes:
            for index, name in enumerate(node.input):
                readers[name].append((node, index))
        self.readers = readers
        in_source = {node.name: node for node in source_model.graph.node}
        position = {id(node): i for i, node in enumerate(nodes)}
        layers = set(self.layers)
        pairs = []
        for dq in nodes:
            if dq.op_type != "DequantizeLinear":
                continue
            users = readers[dq.output[0]]
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                members, tensor = (position[id(q)], position[id(dq)]), q.input[0]
            else:  # INT8 (or INT32 bias) values stored: the float tensor is what the source node read there
                names = {in_source[n.name].input[i] for n, i in users if n.name in in_source}
                if len(names) != 1:
                    raise RuntimeError(f"cannot tell which float tensor {dq.name} dequantizes ({sorted(names)})")
                members, tensor = (position[id(dq)],), names.pop()
            wanted = {n.name for n, _ in users if n.name in layers}
            maker = producer.get(tensor)
            if outputs_quantized and maker is not None and maker.name in layers:
                wanted.add(maker.name)
            pairs.append(QdqPair(members, dq.output[0], tensor, frozenset(wanted)))
        return pairs

    def build(self, floats: frozenset[str]):
        """The quantized model with the layers ``floats`` in float (a new ``onnx.ModelProto``)."""
        if self._last is not None and self._last[0] == floats:
            return self._last[1]
        model = type(self.model)()
        model.CopyFrom(self.model)
        drop = [p for p in self.pairs if p.wanted and p.wanted <= floats]
        if drop:
            outputs = {o.name for o in model.graph.output}
            renamed = {}
            for pair in drop:
                if pair.output in outputs:  # the producer's output was renamed for the pair: name it back
                    renamed[pair.tensor] = pair.output
                else:
                    renamed[pair.output] = pair.tensor
            removed = {i for pair in drop for i in pair.nodes}
            nodes = [node for i, node in enumerate(model.graph.node) if i not in removed]
            for node in nodes:
                for field in (node.input, node.output):
                    for i, name in enumerate(field):
                        field[i] = renamed.get(name, name)
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            used = {name for node in nodes for name in node.input}
            produced = {name for node in nodes for name in node.output}  # a DQ may output the float name
            kept = [init for init in model.graph.initializer if init.name in used]
            kept += [self.floats[name] for name in sorted(used - produced) if name in self.floats]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
        self._last = (floats, model)
        return model

    def _tainted(self, floats: frozenset[str]) -> set[str]:
        """Tensors (named as in the full quantized graph) whose values differ from FP32 in the
        probe with ``floats`` in float: everything downstream of a pair it keeps."""
        todo = [p.output for p in self.pairs if not (p.wanted and p.wanted <= floats)]
        tainted = set(todo)
        while todo:
            for node, _ in self.readers.get(todo.pop(), ()):
                for out in node.output:
                    if out not in tainted:
                        tainted.add(out)
                        todo.append(out)
        return tainted

    def warm(self, int8_sets: list[set[str]]) -> None:
        """Before probes that each keep one of ``int8_sets`` in INT8: keep the FP32 values of the
        tensors where they start to differ from FP32, from one run of the float model."""
        renamed = {p.output: p.tensor for p in self.pairs}
        cut: set[str] = set()
        for keep in int8_sets:
            floats = frozenset(self.layers) - frozenset(keep)
            tainted = self._tainted(floats)
            kept_q = {i for p in self.pairs if not (p.wanted and p.wanted <= floats) for i in p.nodes[:-1]}
            for index, node in enumerate(self.model.graph.node):
                if index in kept_q or any(name in tainted for name in node.input):
                    cut |= {renamed.get(n, n) for n in node.input if n and n not in tainted}
        constants = {i.name for graph in (self.model.graph, self.source.graph) for i in graph.initializer}
        cut -= constants | self.fixed | self.cache.keys()
        if not cut:
            return
        model = type(self.source)()
        model.CopyFrom(self.source)
        existing = {o.name for o in model.graph.output}
        model.graph.output.extend(_value_info(name) for name in sorted(cut - existing))
        runner = OnnxRuntimeRunner(model.SerializeToString(), self.as_written)
        names = [o.name for o in runner.session.get_outputs()]
        values = [dict(zip(names, runner.session.run(None, {runner.input_name: b}), strict=True)) for b in self.held]
        cut = {name for name in cut if values[0][name].dtype == np.float32}  # the cut's inputs are declared float
        if sum(values[0][name].nbytes for name in cut) * len(values) > CACHE_BYTES:
            return  # probes then run whole: slower, the same numbers
        self.cache.update({name: [v[name] for v in values] for name in cut})

    def after_cut(self, model, usable: set[str]):
        """The part of ``model`` its outputs need when the ``usable`` tensors are given as inputs."""
        producer = {out: node for node in model.graph.node for out in node.output}
        constants = {init.name for init in model.graph.initializer}
        needed, inputs, todo, seen = set(), [], [o.name for o in model.graph.output], set()
        while todo:
            name = todo.pop()
            if not name or name in seen or name in constants:
                continue
            seen.add(name)
            node = producer.get(name)
            if name in usable or node is None:
                inputs.append(name)
            elif id(node) not in needed:
                needed.add(id(node))
                todo.extend(node.input)
        part = type(model)()
        part.ir_version, part.producer_name = model.ir_version, model.producer_name
        part.opset_import.extend(model.opset_import)
        graph = part.graph
        graph.node.extend(node for node in model.graph.node if id(node) in needed)
        used = {name for node in graph.node for name in node.input}
        graph.initializer.extend(init for init in model.graph.initializer if init.name in used)
        originals = {i.name: i for i in model.graph.input}
        graph.input.extend(originals.get(name) or _value_info(name) for name in sorted(inputs))
        graph.output.extend(model.graph.output)
        return part

    def error(self, floats: frozenset[str]) -> float:
        return self.measure(self.outputs(floats), self.references)

    def parts(self, floats: frozenset[str]) -> dict:
        """The error of each output (depth, and each extra output the measure holds)."""
        return self.measure.parts(self.outputs(floats), self.references)

    def outputs(self, floats: frozenset[str]) -> list[list[np.ndarray]]:
        """Every output of the model with ``floats`` in float, per held-out image."""
        model = self.build(floats)
        usable = set(self.cache) - self._tainted(floats) if self.cache else set()
        if usable:
            model = self.after_cut(model, usable)
        if model.ByteSize() > PROTOBUF_LIMIT:  # vitg: ONNX Runtime reads it from a file with its weights beside
            path = self.workdir / "probe.onnx"
            save_onnx(model, path)
            runner = OnnxRuntimeRunner(path, self.as_written)
        else:
            runner = OnnxRuntimeRunner(model.SerializeToString(), self.as_written)
        names = [i.name for i in runner.session.get_inputs()]
        outputs = []
        for index, batch in enumerate(self.held):
            feeds = {name: self.cache[name][index] if name in self.cache else batch for name in names}
            outs = runner.session.run(None, feeds)
            if self.sky is not None:
                outs[0] = sky_to_far(outs[0], outs[self.sky])
            outputs.append(outs)
        return outputs


def _value_info(name: str):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
