"""SmoothQuant's multiplies folded back into the float layers NNCF left in float.

NNCF's SmoothQuant (3.4: ``nncf.quantization.algorithms.post_training.pipeline`` builds it with no
ignored scope) divides a MatMul's input by a per-channel scale, as a ``Multiply`` inserted before
it, and multiplies the layer's weights by the same scale, also for the layers the ignored scope
then keeps in float. Before an INT8 layer the multiply is folded into its ``FakeQuantize``; before
a float one it stays, one more elementwise pass over the activation at run time that changes
nothing but rounding. Here each such multiply is folded into the float weights it feeds:
``(x * s) @ W == x @ (s[:, None] * W)``, which gives back the weights the layer had up to float
rounding. A multiply is folded only where every consumer is a float MatMul whose weights are a
constant taking the scale on their input dimension; anything else is left as NNCF wrote it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _constant_input(node: Any) -> tuple[int, Any] | None:
    """(index of the non-constant input, the constant's data) of a two-input node, else None."""
    kinds = [node.input_value(i).get_node().get_type_name() for i in range(node.get_input_size())]
    if len(kinds) != 2 or kinds.count("Constant") != 1:
        return None
    const = kinds.index("Constant")
    return 1 - const, node.input_value(const).get_node().get_data()


def _scaled_weights(matmul: Any, index: int, scale: np.ndarray) -> np.ndarray | None:
    """``matmul``'s constant weights (its other input than ``index``, the scaled activation) with
    ``scale`` folded into their contracted axis, or None where the scale does not run along the
    activation's contracted axis or the weights are not a float32 constant of that size."""
    weights = matmul.input_value(1 - index).get_node()
    attributes = matmul.get_attributes()
    # the activation's last axis must be the one the product contracts
    if bool(attributes.get("transpose_a" if index == 0 else "transpose_b")) != (index == 1):
        return None
    if weights.get_type_name() != "Constant":
        return None
    data = weights.get_data()
    if data.ndim < 2 or data.dtype != np.float32:
        return None
    # the weights' contracted axis: -2 for (..., K, N) on the right, -1 for (..., N, K) there;
    # on the left the other way round; leading axes (a per-head batch) take the scale alike
    transposed = bool(attributes.get("transpose_b" if index == 0 else "transpose_a"))
    axis = -1 if transposed == (index == 0) else -2
    if data.shape[axis] != scale.size:
        return None
    return data * (scale[None, :] if axis == -1 else scale[:, None])


def fold_smooth_quant_into_float(model: Any) -> int:
    """Fold, in place, each SmoothQuant multiply that feeds only float MatMuls (module doc);
    returns how many were folded."""
    from openvino import opset13

    folded = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Multiply":
            continue
        found = _constant_input(node)
        if found is None:
            continue
        source, scale = found
        if scale.dtype != np.float32 or scale.size < 2 or scale.size != scale.shape[-1]:
            continue  # a per-channel scale along the last axis only
        if node.get_output_partial_shape(0) != node.input_value(source).get_partial_shape():
            continue  # the scale broadcasts the activation to another shape: not a per-channel scale
        scale = scale.reshape(-1)
        targets = list(node.output(0).get_target_inputs())
        if not targets or any(t.get_node().get_type_name() != "MatMul" for t in targets):
            continue
        scaled = [(t, _scaled_weights(t.get_node(), t.get_index(), scale)) for t in targets]
        if any(weights is None for _, weights in scaled):
            continue
        upstream = node.input_value(source)
        for target, weights in scaled:
            matmul = target.get_node()
            index = target.get_index()
            old = matmul.input_value(1 - index).get_node()
            new = opset13.constant(weights.astype(np.float32))
            new.set_friendly_name(old.get_friendly_name())
            matmul.input(1 - index).replace_source_output(new.output(0))
            matmul.input(index).replace_source_output(upstream)
        folded += 1
    if folded:
        model.validate_nodes_and_infer_types()
    return folded
