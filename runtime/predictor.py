"""``DepthPredictor``: one object that turns images into depth on any backend."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from . import preprocessing as pre
from .backends import backend_class, resolve_backend
from .backends.base import describe_source
from .errors import InputError
from .metric import OutputKind, resolve_output_kind


class DepthPredictor:
    """Depth for images, at the images' own resolution: relative inverse depth (larger = nearer)
    or, from a metric model, metres (``output_kind``, ``max_depth``, ``info()["output"]``).

    ``model`` is a file or a ``torch.nn.Module``; the suffix picks the backend (``.pth`` and
    ``.safetensors``: torch, ``.onnx``: onnxruntime, ``.engine``/``.plan``: tensorrt, ``.xml``:
    openvino) and ``backend=`` overrides it. Dynamic-shape models get the official keep-aspect
    resize with the short side at ``input_size``; fixed-shape models get their own shape
    (``fixed_size=(H, W)`` pins a dynamic model to one). Images are HxWx3 uint8 BGR (OpenCV's
    order; ``rgb=True`` for RGB) or HxW gray. Calls are safe from several threads.

    ``max_long_side`` bounds the work per image on a dynamic model: the network input's long side
    is capped there (default 4x the short side: 2072 for ``input_size=518``), keeping the aspect
    ratio, so no image costs more than 4x the patches of an ``input_size`` square frame (see
    ``runtime.preprocessing``). Only aspect ratios beyond 4:1 are affected.

    ``verify=True`` runs the model on its reference (``<model>.reference.npz``, written by every
    export; or pass the reference's path) when it loads, and raises
    ``runtime.reference.ReferenceMismatch`` with the numbers when it is over the reference's
    tolerance; ``info()["verification"]`` holds the result. It costs one inference per reference
    input (a few) at load.
    What the model outputs comes from the artefact (a checkpoint's head, ONNX metadata, OpenVINO
    rt_info, a sidecar). A file that says nothing is relative unless ``output_kind="metric"`` and
    ``max_depth`` say so; a request that contradicts the file is refused.
    """

    def __init__(
        self,
        model: Any,
        backend: str = "auto",
        device: str = "auto",
        input_size: int = 518,
        precision: str | None = None,
        rgb: bool = False,
        fixed_size: tuple[int, int] | None = None,
        max_long_side: int | None = None,
        verify: bool | str | Path = False,
        output_kind: str | None = None,
        max_depth: float | None = None,
        **backend_options: Any,
    ) -> None:
        if not isinstance(input_size, int) or input_size < pre.PATCH_SIZE:
            raise ValueError(f"input_size must be an integer of at least {pre.PATCH_SIZE}, got {input_size!r}")
        self.max_long_side = pre.check_long_side(
            pre.default_long_side(input_size) if max_long_side is None else max_long_side, input_size
        )
        name = resolve_backend(model, backend)
        self._backend = backend_class(name)(model, device=device, precision=precision, **backend_options)
        self._source = describe_source(model)
        try:
            self.output: OutputKind = resolve_output_kind(
                self._backend.output_kind, output_kind, max_depth, self._source
            )
        except InputError:
            self._backend.close()
            raise
        self.input_size = input_size
        self.rgb = rgb
        model_hw = self._backend.input_spec.fixed_hw
        if fixed_size is not None and model_hw is not None and tuple(fixed_size) != model_hw:
            raise ValueError(f"fixed_size {tuple(fixed_size)} differs from the model's fixed input {model_hw}")
        # A fixed-shape model always gets its own shape; a dynamic one may be pinned to one
        # (steady latency, and the same input a fixed-shape engine would see).
        self.fixed_size = model_hw or (tuple(fixed_size) if fixed_size is not None else None)
        self.verification = None
        if verify:
            from .reference import reference_for, require_within, verify_backend

            try:
                reference = reference_for(model, None if verify is True else verify)
                self.verification = require_within(verify_backend(self._backend, reference), model)
            except BaseException:
                self._backend.close()
                raise

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def output_kind(self) -> str:
        """``"relative"`` (inverse depth, unitless, larger = nearer) or ``"metric"`` (metres)."""
        return self.output.kind

    @property
    def max_depth(self) -> float | None:
        """A metric model's depth bound in metres; ``None`` for a relative model."""
        return self.output.max_depth

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The model's ``(N, 3, H, W)`` input; ``None`` where a dimension is dynamic."""
        return self._backend.input_spec.shape

    def prepare(self, image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
        """The ``(1, 3, h, w)`` network input this predictor feeds its model for ``image``."""
        rgb = self.rgb if rgb is None else rgb
        if self.fixed_size is not None:
            return pre.prepare_fixed(image, self.fixed_size, rgb)
        return pre.prepare_dynamic(image, self.input_size, rgb, self.max_long_side)

    def predict(self, image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
        """``H x W`` float32 depth for one image."""
        batch = self.prepare(image, rgb)
        return pre.resize_depth(self._backend.infer(batch)[0], *image.shape[:2])

    def predict_batch(self, images: Iterable[np.ndarray], rgb: bool | None = None) -> list[np.ndarray]:
        """Depth for several images; those that share a network input size run as one batch."""
        images = list(images)
        if not images:
            return []
        inputs = []
        for index, image in enumerate(images):
            try:
                inputs.append(self.prepare(image, rgb))
            except InputError as exc:
                raise InputError(f"image {index}: {exc}") from exc
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in enumerate(inputs):
            groups.setdefault(tensor.shape, []).append(index)
        chunk = self._backend.input_spec.max_batch or len(images)
        depth: list[np.ndarray | None] = [None] * len(images)
        for members in groups.values():
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                outputs = self._backend.infer(np.concatenate([inputs[i] for i in part]))
                for row, i in enumerate(part):
                    depth[i] = pre.resize_depth(outputs[row], *images[i].shape[:2])
        return depth  # type: ignore[return-value]

    def stream(
        self,
        frames: Iterable[np.ndarray],
        rgb: bool | None = None,
        depth: int | None = None,
        stabilize: bool | Any = False,
    ) -> Iterator[np.ndarray]:
        """Depth for each frame of a video, in order, with pre-processing, inference and
        post-processing of neighbouring frames overlapping.

        Up to ``depth`` frames are in flight (default: the backend's concurrency + 2); frames
        are read from the iterable only as results are consumed. ``stabilize=True`` (or a
        ``runtime.align.Stabilizer``, to read its flicker figures afterwards) puts each frame's
        relative depth on the scale of the frames before it, so values and colours hold still.
        """
        from .align import Stabilizer

        stabilizer = Stabilizer() if stabilize is True else stabilize or None
        if stabilizer is not None and self.output.is_metric:
            raise InputError(f"the model outputs {self.output.describe()}: stabilize is for relative models")
        depth = depth or self._backend.max_concurrency + 2
        pending: deque = deque()

        def result() -> np.ndarray:
            frame, future = pending.popleft()
            out = future.result()
            return stabilizer(frame, out) if stabilizer is not None else out

        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="depth-stream") as pool:
            for frame in frames:
                pending.append((frame, pool.submit(self.predict, frame, rgb)))
                if len(pending) >= depth:
                    yield result()
            while pending:
                yield result()

    def info(self) -> dict[str, Any]:
        """Backend, device, precision, input shape, library versions and what the model outputs."""
        return {
            **self._backend.info(),
            "model": self._source,
            "output": self.output.info(),
            "input_size": self.input_size,
            "max_long_side": self.max_long_side,
            "verification": self.verification.to_dict() if self.verification is not None else None,
        }

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> DepthPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        b = self._backend
        return f"DepthPredictor({self._source!r}, backend={b.name!r}, device={b.device!r}, precision={b.precision!r})"
