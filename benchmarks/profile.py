"""Where a row's model call spends its time, by kind of work, from the backend's own profiler.

The worker runs a profiled pass apart from the timed rounds (``Backend.profile``: a second
compiled model or session with the profiler on, see ``runtime.backends.profiling``) and returns
one record per layer. Here each layer gets a kind of work from a table per backend: the data
below maps each profiler's op names to kinds, and a matrix layer is INT8 or float by the kernel
that ran it. A layer that fused several ops (OpenVINO's ``Subgraph``, a TensorRT fusion) takes
the highest-ranked kind among them, and one that holds both matrix products and a softmax is
fused attention, since no profiler splits it further.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from runtime.io.files import atomic_write

# Kinds of work, in the order the report stacks them.
KINDS = {
    "int8_matmul": "INT8 matrix products",
    "float_matmul": "float matrix products",
    "attention": "fused attention (matrix products + softmax)",
    "softmax": "softmax",
    "norm": "normalisation",
    "gelu": "GELU",
    "resize": "resize and transposed convolution",
    "reorder": "layout reorders, copies and type conversions",
    "other": "other (element-wise; PyTorch's Python between ops)",
}
# A fused layer is the first of these among its ops ("matmul" then splits by format).
PRIORITY = ("attention", "matmul", "int8_matmul", "float_matmul", "resize", "softmax", "norm", "gelu", "reorder")

_MOVES = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Pad", "Tile", "Expand")
_MOVES += ("Flatten", "Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")

# ONNX op types, as ONNX Runtime's profile names its nodes (``args.op_name``, after its fusions)
# and as TensorRT layer names carry them (the ONNX node names an export writes end in the op type).
ONNX_OPS: dict[str, str] = {
    # Float in ONNX Runtime (its INT8 kernels have op types of their own); INT8 in TensorRT where
    # the layer absorbed Q/DQ nodes.
    **dict.fromkeys(("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Conv", "FusedConv", "NhwcConv"), "matmul"),
    **dict.fromkeys(
        ("QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearConv"),
        "int8_matmul",
    ),
    **dict.fromkeys(("ConvInteger", "NhwcQLinearConv"), "int8_matmul"),
    **dict.fromkeys(("Attention", "MultiHeadAttention", "QAttention", "GroupQueryAttention"), "attention"),
    **dict.fromkeys(("Softmax", "QLinearSoftmax", "LogSoftmax"), "softmax"),
    **dict.fromkeys(
        ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "BatchNormalization"), "norm"
    ),
    **dict.fromkeys(("InstanceNormalization", "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization"), "norm"),
    **dict.fromkeys(("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf"), "gelu"),
    **dict.fromkeys(("Resize", "Upsample", "ConvTranspose"), "resize"),
    **dict.fromkeys((*_MOVES, "ReorderInput", "ReorderOutput", "Reformat"), "reorder"),
}
# OpenVINO CPU plugin node types (``node_type``, the op type or the plugin's own node such as
# ``FullyConnected``, ``Subgraph``, ``Reorder``) and the original op types fused into a node.
OPENVINO_OPS: dict[str, str] = {
    **dict.fromkeys(("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution"), "matmul"),
    **dict.fromkeys(("GroupConvolution", "BinaryConvolution"), "matmul"),
    **dict.fromkeys(("ScaledDotProductAttention", "MHA"), "attention"),
    **dict.fromkeys(("Softmax", "SoftMax", "LogSoftmax"), "softmax"),
    **dict.fromkeys(("MVN", "NormalizeL2", "RMS", "BatchNormInference"), "norm"),
    "Gelu": "gelu",
    **dict.fromkeys(("Interpolate", "ConvolutionBackpropData", "Deconvolution"), "resize"),
    **dict.fromkeys(("GroupConvolutionBackpropData",), "resize"),
    **dict.fromkeys((*_MOVES, "Reorder", "Convert", "FakeQuantize", "VariadicSplit", "StridedSlice"), "reorder"),
    **dict.fromkeys(("Broadcast", "ShuffleChannels", "DepthToSpace", "SpaceToDepth"), "reorder"),
}
# aten ops by self CPU time. oneDNN runs a transposed convolution inside ``aten::_convolution``
# itself (no op of its own), so that op's self time is counted as transposed convolution; every
# convolution's own overhead lands there too, a few microseconds each.
_ATTENTION = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention")
_ATTENTION += ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
_ATTENTION += ("_flash_attention_forward", "_efficient_attention_forward", "scaled_dot_product_attention")
TORCH_OPS: dict[str, str] = {
    **{
        f"aten::{op}": "float_matmul"
        for op in ("addmm", "mm", "bmm", "baddbmm", "matmul", "linear", "mkldnn_linear", "_addmm_activation")
    },
    **{f"aten::{op}": "float_matmul" for op in ("mkldnn_convolution", "_slow_conv2d_forward", "cudnn_convolution")},
    **{f"aten::{op}": "float_matmul" for op in ("conv2d", "convolution", "t")},  # wrappers' own overhead
    **{f"aten::{op}": "attention" for op in _ATTENTION},
    **{f"aten::{op}": "softmax" for op in ("_softmax", "softmax", "_log_softmax")},
    **{f"aten::{op}": "norm" for op in ("native_layer_norm", "layer_norm", "native_batch_norm", "group_norm")},
    "aten::gelu": "gelu",
    **{
        f"aten::{op}": "resize"
        for op in ("upsample_bilinear2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")
    },
    **{f"aten::{op}": "resize" for op in ("upsample_nearest2d", "slow_conv_transpose2d", "_convolution")},
    **{f"aten::{op}": "resize" for op in ("cudnn_convolution_transpose", "conv_transpose2d")},
    **{
        f"aten::{op}": "reorder"
        for op in ("copy_", "_to_copy", "to", "clone", "contiguous", "cat", "permute", "transpose", "reshape")
    },
    **{f"aten::{op}": "reorder" for op in ("view", "expand", "as_strided", "as_strided_", "_unsafe_view", "stack")},
    **{f"aten::{op}": "reorder" for op in ("unbind", "select", "slice", "narrow", "unsqueeze", "squeeze", "flatten")},
}
TABLES = {"openvino": OPENVINO_OPS, "onnxruntime": ONNX_OPS, "tensorrt": ONNX_OPS, "torch": TORCH_OPS}

_INT8_KERNEL = re.compile(r"_(i8|u8)$", re.IGNORECASE)
_NUMBERED = re.compile(r"(_clone)?(_\d+)+$")
# TensorRT's own layers: reformatting copies, and Myelin's fused graphs (which report only the
# names of their first and last nodes, so their contents cannot be told apart).
_TRT_REFORMAT = re.compile(r"^Reformatting CopyNode|^Reformat", re.IGNORECASE)


def tensorrt_ops(layer: str) -> list[str]:
    """The ONNX op types a TensorRT layer name carries: fused layers join their nodes' names with
    ``" + "`` (vertical) or ``" || "`` (horizontal), pointwise fusions wrap them in ``PWN(...)``,
    and each ONNX node name exported from PyTorch ends in its op type (``/blocks.0/attn/MatMul_1``)."""
    if _TRT_REFORMAT.match(layer):
        return ["Reformat"]
    if layer.startswith("{ForeignNode["):
        return ["ForeignNode"]
    ops = []
    for part in re.split(r"\s*\+\s*|\s*\|\|\s*|[(),]", layer):
        part = part.strip()
        if not part or part == "PWN":
            continue
        op = _NUMBERED.sub("", part.rsplit("/", 1)[-1])
        # Q/DQ fused into a layer keep the node names of the quantized tensor's producer
        # ("..._quantize_scale_node", "QuantizeLinear_clone_1"): the Q/DQ op names survive.
        for qdq in ("DequantizeLinear", "QuantizeLinear"):
            if qdq.lower() in part.lower():
                op = qdq
                break
        ops.append(op)
    return ops


def classify(backend: str, layer: dict) -> str:
    """The kind of work one profiled layer did (a key of ``KINDS``)."""
    table = TABLES.get(backend, {})
    if backend == "tensorrt":
        ops = tensorrt_ops(layer["name"])
    else:
        ops = [layer["op"], *layer.get("fused", ())]
    kinds = {table[op] for op in ops if op in table}
    if not kinds:
        return "other"
    if kinds & {"matmul", "int8_matmul", "float_matmul"} and "softmax" in kinds:
        return "attention"
    kind = next(k for k in PRIORITY if k in kinds)
    if kind != "matmul":
        return kind
    if backend == "tensorrt":  # INT8 where the layer absorbed Q/DQ nodes (explicit quantization)
        return "int8_matmul" if {"QuantizeLinear", "DequantizeLinear"} & set(ops) else "float_matmul"
    return "int8_matmul" if _INT8_KERNEL.search(layer.get("impl", "")) else "float_matmul"


def summarize(profile: dict, backend: str, model_call_s: float | None = None) -> dict:
    """The report's ``profile`` of a row: ms and share per kind of work, the layers' total against
    the wall time of the profiled calls (``coverage``: how much of the call the profiler saw), the
    hottest layers, and the op types that fell to ``other`` (so a missing table entry shows)."""
    layers = profile["layers"]
    kinds: Counter[str] = Counter()
    others: Counter[str] = Counter()
    labelled = []
    for layer in layers:
        kind = classify(backend, layer)
        kinds[kind] += layer["seconds"]
        if kind == "other":
            fused = "+".join(layer.get("fused", ()))
            others[f"{layer['op'] or layer['name'][:60]}" + (f"({fused})" if fused else "")] += layer["seconds"]
        labelled.append((layer, kind))
    total = sum(kinds.values())
    wall = float(np.mean(profile["wall_s"])) if profile["wall_s"] else None  # layers are means too
    hottest = sorted(labelled, key=lambda lk: -lk[0]["seconds"])[:8]
    return {
        "source": profile["source"],
        "calls": len(profile["wall_s"]),
        "wall_ms": wall * 1e3 if wall else None,
        "layers_ms": total * 1e3,
        "coverage": total / wall if wall else None,
        "vs_timed_model_call": total / model_call_s if model_call_s else None,
        "kinds": {k: {"ms": kinds[k] * 1e3, "share": kinds[k] / total if total else 0.0} for k in KINDS if kinds[k]},
        "hottest": [
            {"name": x["name"][:120], "op": x["op"], "impl": x["impl"], "kind": kind, "ms": x["seconds"] * 1e3}
            for x, kind in hottest
        ],
        "other_ops_ms": {op: s * 1e3 for op, s in others.most_common(8)},
    }


def add_efficiency(rows: list[dict], roofline: dict) -> None:
    """For each profiled row whose attention ran as one fused kernel: the matrix work per second in
    that kernel and in the other matrix layers, against the ceiling of the format the row runs in.
    Where the matrix layers run near the ceiling and the attention far below it, the gap is the
    softmax between the attention's two products, which no profiler splits off (the attention's
    work: ``roofline.matrix_work``)."""
    for row in rows:
        profile = row.get("profile") or {}
        kinds = profile.get("kinds") or {}
        work = roofline["work"].get(f"{row['size'][0]}x{row['size'][1]}") or {}
        if "attention" not in kinds or "softmax" in kinds or "attention_macs" not in work:
            continue  # no attention kernel, or one that runs only part of the attention
        ceiling = (roofline["ceilings"].get(row.get("computes_in")) or {}).get("ops_per_s")
        attention = 2 * work["attention_macs"]
        others = work["ops"] - attention - 2 * work["macs"].get("ConvTranspose", 0)  # ConvTranspose: "resize"
        parts = {"attention": (attention, kinds["attention"]["ms"])}
        matmul_ms = sum(kinds[k]["ms"] for k in ("int8_matmul", "float_matmul") if k in kinds)
        if matmul_ms:
            parts["other matrix products"] = (others, matmul_ms)
        profile["efficiency"] = {
            name: {
                "ops": ops,
                "ms": ms,
                "ops_per_s": ops / (ms * 1e-3),
                "share_of_ceiling": ops / (ms * 1e-3) / ceiling if ceiling else None,
            }
            for name, (ops, ms) in parts.items()
        }


def efficiency_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        parts = []
        for name, e in (row["profile"].get("efficiency") or {}).items():
            share = (
                f", {e['share_of_ceiling']:.0%} of the {row['computes_in'].upper()} ceiling"
                if e["share_of_ceiling"]
                else ""
            )
            parts.append(
                f"{name} {e['ops'] / 1e9:.1f} G operations in {e['ms']:.1f} ms ({e['ops_per_s'] / 1e9:.0f} G/s{share})"
            )
        if parts:
            lines.append(f"- {_label(row)}: " + "; ".join(parts) + ".")
    if lines:
        lines.append(
            "- The fused attention holds its softmax (exponentials of every score) between its two matrix products; "
            "on a CPU that runs in FP32 vector units whatever the products' format: x86 BF16 extensions "
            "(AVX512-BF16, AMX-BF16) add bf16 dot products and conversions, not bf16 arithmetic, and no CPU "
            "computes an exponential in INT8."
        )
    return lines


# Colours per kind, fixed so that figures of different runs read alike.
COLOURS = {
    "int8_matmul": "#1f77b4",
    "float_matmul": "#aec7e8",
    "attention": "#9467bd",
    "softmax": "#d62728",
    "norm": "#ff7f0e",
    "gelu": "#bcbd22",
    "resize": "#2ca02c",
    "reorder": "#8c564b",
    "other": "#c7c7c7",
}


def _label(row: dict) -> str:
    name = f"{row['backend']} ({row['variant'].split(',')[0]})" if row.get("variant") else row["backend"]
    return f"{name} {row['precision']} {row['size'][0]}x{row['size'][1]}"


def profiled(rows: list[dict]) -> list[dict]:
    return [r for r in rows if (r.get("profile") or {}).get("kinds")]


def profile_lines(data: dict) -> list[str]:
    """The report's table: each profiled row's model call split by kind of work (share of the
    layers' time), with how much of the call the profiler saw."""
    rows = profiled(data["rows"])
    if not rows:
        return []
    used = [k for k in KINDS if any(k in r["profile"]["kinds"] for r in rows)]
    lines = [
        "",
        "## Where the model call spends its time",
        "",
        "From each backend's own profiler in a separate pass after the timed rounds (so its overhead is "
        "not in the timings): share of the profiled layers' time per kind of work; *profiled* is the "
        "layers' total and, in brackets, its share of the profiled calls' wall time. "
        "Figure: `profile.png`.",
        "",
        "| row | profiled ms | " + " | ".join(KINDS[k] for k in used) + " |",
        "|" + "---|" * (2 + len(used)),
    ]
    for r in rows:
        p = r["profile"]
        shares = " | ".join(f"{p['kinds'][k]['share']:.0%}" if k in p["kinds"] else "-" for k in used)
        lines.append(f"| {_label(r)} | {p['layers_ms']:.1f} ({p['coverage']:.0%}) | {shares} |")
    notes = efficiency_lines(rows)
    lines += ["", *notes] if notes else []
    missing = [r for r in data["rows"] if (r.get("profile") or {}).get("unavailable")]
    lines += [f"- {_label(r)}: no profile ({r['profile']['unavailable']})" for r in missing]
    return lines


def profile_figure(data: dict):
    """One stacked bar per profiled row: ms per model call by kind of work; None without profiles."""
    rows = profiled(data["rows"])
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.45 * len(rows)))
    labels = [_label(r) for r in rows]
    left = np.zeros(len(rows))
    for kind in KINDS:
        widths = np.array([r["profile"]["kinds"].get(kind, {}).get("ms", 0.0) for r in rows])
        if widths.any():
            ax.barh(labels, widths, left=left, color=COLOURS[kind], label=KINDS[kind], height=0.6)
            left += widths
    ax.invert_yaxis()
    ax.set_xlabel("ms per model call (backend profiler, profiled pass)")
    ax.set_title("Where the model call spends its time")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def write_profile_figure(data: dict, folder: Path) -> list[Path]:
    """``profile.png`` in ``folder`` when any row has a profile."""
    fig = profile_figure(data)
    if fig is None:
        return []
    import matplotlib.pyplot as plt

    path = atomic_write(
        folder / "profile.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    )
    plt.close(fig)
    return [path]
