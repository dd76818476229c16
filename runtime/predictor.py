"""``DepthPredictor``: one object that turns images into depth on any backend."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import InputError

from . import preprocessing as pre
from .backends import backend_class, resolve_backend
from .backends.base import describe_source
from .metric import OutputKind, camera_focal, metres_from_focal, network_focal, resolve_output_kind
from .prediction import assemble, with_outputs
from .video_stream import VideoStream, close_streams, first_frames, stream_frames

RUN_PRECISIONS = ("fp32", "fp16", "bf16")  # what precision= may ask a backend to run in


class DepthPredictor:
    """Depth for images, at the images' own resolution: relative inverse depth (larger = nearer)
    or, from a metric model, metres (``output_kind``, ``max_depth``, ``info()["output"]``); from a
    Depth Anything 3 network depth up to scale, or metres from a depth-per-focal-length model
    (DA3Metric) with the camera's focal length (``focal=`` or ``intrinsics=``, at the resolution
    of the images given; without one it refuses to give metres).

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

    ``streams=N`` (OpenVINO, ONNX Runtime, TensorRT) lets N model calls run at once, each on its
    share of the device: ``stream``, ``stream_batches`` and ``predict_batch`` then keep N calls in
    flight (throughput for several cameras); the default, 1, gives each call the whole device
    (lowest latency).
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
        focal: float | None = None,
        intrinsics: Any = None,
        **backend_options: Any,
    ) -> None:
        if not isinstance(input_size, int) or input_size < pre.PATCH_SIZE:
            raise ValueError(f"input_size must be an integer of at least {pre.PATCH_SIZE}, got {input_size!r}")
        self.max_long_side = pre.check_long_side(
            pre.default_long_side(input_size) if max_long_side is None else max_long_side, input_size
        )
        if precision is not None and precision not in RUN_PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(RUN_PRECISIONS)} (or None: the artefact's own), got {precision!r}"
            )
        name = resolve_backend(model, backend)
        self._attach(
            backend_class(name)(model, device=device, precision=precision, **backend_options),
            describe_source(model),
            input_size,
            rgb,
            fixed_size,
            output_kind,
            max_depth,
            focal,
            intrinsics,
        )
        self.verification = None
        if verify:
            from .reference import reference_for, require_within
            from .stream_check import check_backend  # a stream's reference: frame by frame

            try:
                reference = reference_for(model, None if verify is True else verify)
                self.verification = require_within(check_backend(self._backend, reference), model)
            except BaseException:
                self._backend.close()
                raise

    @classmethod
    def from_backend(
        cls,
        backend: Any,
        source: str = "a backend",
        input_size: int = 518,
        rgb: bool = False,
        fixed_size: tuple[int, int] | None = None,
        max_long_side: int | None = None,
        output_kind: str | None = None,
        max_depth: float | None = None,
        focal: float | None = None,
        intrinsics: Any = None,
    ) -> DepthPredictor:
        """A predictor around a backend object that is already built: the public seam for one.

        ``backend`` has the backend protocol of :class:`runtime.backends.base.Backend` (its
        ``name``, ``input_spec``, ``device``, ``precision``, ``output_kind``, ``variant``,
        ``max_concurrency``, ``takes_images``, ``pipeline``, ``stream_names``, ``infer(batch)``,
        ``info()`` and ``close()``): one of ``runtime.backends``, or one wrapped to record the
        batches it runs. ``source`` names the model in messages; the other arguments are the
        constructor's. The predictor owns the backend: ``close()`` closes it."""
        predictor = cls.__new__(cls)
        try:
            if not isinstance(input_size, int) or input_size < pre.PATCH_SIZE:
                raise ValueError(f"input_size must be an integer of at least {pre.PATCH_SIZE}, got {input_size!r}")
            predictor.max_long_side = pre.check_long_side(
                pre.default_long_side(input_size) if max_long_side is None else max_long_side, input_size
            )
        except ValueError:
            backend.close()
            raise
        predictor._attach(backend, source, input_size, rgb, fixed_size, output_kind, max_depth, focal, intrinsics)
        predictor.verification = None
        return predictor

    def _attach(
        self,
        backend: Any,
        source: str,
        input_size: int,
        rgb: bool,
        fixed_size: tuple[int, int] | None,
        output_kind: str | None,
        max_depth: float | None,
        focal: float | None,
        intrinsics: Any,
    ) -> None:
        """Take ``backend`` (closed again when what is asked of it is refused)."""
        self._backend, self._source = backend, source
        try:
            self.output: OutputKind = resolve_output_kind(
                self._backend.output_kind, output_kind, max_depth, self._source
            )
            if self._backend.variant.startswith("Metric-") and self.output.source == "default":
                raise InputError(
                    f"{self._source} ({self._backend.variant}) outputs metres with no stated bound: pass "
                    "output_kind='metric' and max_depth=<metres> (--output-kind metric --max-depth M)"
                )
        except InputError:
            self._backend.close()
            raise
        try:
            self.camera = self._camera(focal, intrinsics)
        except (InputError, ValueError):
            self._backend.close()
            raise
        self.input_size = input_size
        self.rgb = rgb
        model_hw = self._backend.input_spec.fixed_hw
        if fixed_size is not None and model_hw is not None and tuple(fixed_size) != model_hw:
            self._backend.close()
            raise ValueError(f"fixed_size {tuple(fixed_size)} differs from the model's fixed input {model_hw}")
        # A fixed-shape model always gets its own shape; a dynamic one may be pinned to one
        # (steady latency, and the same input a fixed-shape engine would see).
        self.fixed_size = model_hw or (tuple(fixed_size) if fixed_size is not None else None)

    def _camera(self, focal: Any, intrinsics: Any) -> tuple[float, float] | None:
        return camera_focal(focal, intrinsics, self.output, self._source)

    def _no_focal(self) -> InputError:
        return InputError(
            f"{self._source} outputs {self.output.describe()}: metres need the camera's focal length; "
            "pass focal= (pixels) or intrinsics= (to DepthPredictor or predict)"
        )

    def _to_metres(self, image: np.ndarray, output: np.ndarray, camera: tuple[float, float] | None) -> np.ndarray:
        if camera is None:
            raise self._no_focal()
        focal = network_focal(*camera, image.shape[:2], self.network_size(image))
        return metres_from_focal(output, focal)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def is_stream_model(self) -> bool:
        """A Video Depth Anything model: frames run one after another with a cache
        (``video_stream``, one per camera), not as independent images."""
        return bool(self._backend.stream_names)

    @property
    def output_kind(self) -> str:
        """``"relative"`` (inverse depth, unitless, larger = nearer), ``"metric"`` (metres),
        ``"depth_up_to_scale"`` or ``"metres_per_focal"`` (``runtime.metric``)."""
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
        """What this predictor feeds its model for ``image``: the ``(1, 3, h, w)`` network input,
        or the ``(1, H, W, 3)`` uint8 BGR frame where the model pre-processes it itself."""
        rgb = self.rgb if rgb is None else rgb
        if self._backend.takes_images:
            return pre.to_bgr(image, rgb)[None]
        if self.fixed_size is not None:
            return pre.prepare_fixed(image, self.fixed_size, rgb)
        return pre.prepare_dynamic(image, self.input_size, rgb, self.max_long_side)

    def network_size(self, image: np.ndarray) -> tuple[int, int]:
        """The ``(h, w)`` the model sees ``image`` at: the fixed size, or the official keep-aspect size."""
        if self.fixed_size is not None:
            return self.fixed_size
        return pre.dynamic_size(*pre.check_image(image).shape[:2], self.input_size, self.max_long_side)

    def predict(
        self, image: np.ndarray, rgb: bool | None = None, focal: float | None = None, intrinsics: Any = None
    ) -> np.ndarray:
        """``H x W`` float32 depth for one image (metres from a ``metres_per_focal`` model, with the
        focal length given here or to the predictor)."""
        return self.predict_batch([image], rgb, focal=focal, intrinsics=intrinsics)[0]

    def predict_batch(
        self,
        images: Iterable[np.ndarray],
        rgb: bool | None = None,
        raw: bool = False,
        focal: float | None = None,
        intrinsics: Any = None,
    ) -> list[np.ndarray]:
        """Depth for several images (say one frame per camera) in as few model calls as the model
        allows: images whose network inputs have one size run as one batch, in chunks of the
        most the model takes a call (a fixed batch, a TensorRT profile's maximum; a short chunk is
        padded to the fewest it takes), and chunks run at once where the backend runs several
        calls at once (``streams``). The numbers ``predict`` gives each image, up to the float
        rounding of a batched matrix product. A ``metres_per_focal`` model's output becomes metres
        with the focal length (``focal=``/``intrinsics=`` here, else the predictor's); ``raw=True``
        returns the network's output as it is (depth per focal length), for callers that scale it
        per frame (the bag tool, from each frame's camera info)."""
        rgb = self.rgb if rgb is None else rgb
        images = list(images)
        if self._backend.stream_names:  # Video Depth Anything: each image as a stream's first frame
            return first_frames(self, images, rgb)  # each stream closed after its frame
        camera = self._camera(focal, intrinsics) if (focal is not None or intrinsics is not None) else self.camera
        if self.output.needs_focal and not raw and camera is None:
            raise self._no_focal()
        pipeline = self._backend.pipeline  # pre- and post-processing on the model's device, if any
        keys = []  # per image: its network input, or (its shape, its network size) for the pipeline
        for index, image in enumerate(images):
            try:
                if pipeline is None:
                    keys.append(self.prepare(image, rgb))
                else:
                    keys.append((pre.check_image(image).shape, self.network_size(image)))
            except InputError as exc:
                if len(images) == 1:
                    raise
                raise InputError(f"image {index}: {exc}") from exc
        groups: dict[object, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key if pipeline else key.shape, []).append(index)
        spec = self._backend.input_spec
        size = spec.max_batch or max(len(images), 1)
        chunks = [members[i : i + size] for members in groups.values() for i in range(0, len(members), size)]

        extras = self._backend.extra_outputs  # a DA3 network's sky map or depth confidence

        def run(chunk: list[int]) -> list[np.ndarray]:
            # A model that takes no fewer than N images a call (a fixed batch, a profile's minimum)
            # gets the last image again; the rows it gives for the copies are dropped.
            padded = chunk + chunk[-1:] * (spec.min_batch - len(chunk))
            if pipeline is None:
                batch = np.concatenate([keys[i] for i in padded])
                outs = self._backend.infer_outputs(batch) if extras else {"depth": self._backend.infer(batch)}
                finish = pre.resize_depth
            else:
                batch = pipeline.prepare([images[i] for i in padded], keys[chunk[0]][1], rgb)
                output = self._backend.infer_on_device(batch)
                outs, finish = output if extras else {"depth": output}, pipeline.finish
            maps = [{k: finish(v[row], *images[i].shape[:2]) for k, v in outs.items()} for row, i in enumerate(chunk)]
            return [assemble(m) for m in maps]

        lanes = min(len(chunks), self._backend.max_concurrency)
        if lanes > 1:
            with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="depth-batch") as pool:
                outputs = list(pool.map(run, chunks))
        else:
            outputs = [run(chunk) for chunk in chunks]
        depth: list[np.ndarray] = [np.empty(0)] * len(images)
        for chunk, maps in zip(chunks, outputs):
            for i, depth_map in zip(chunk, maps):
                depth[i] = depth_map
        if self.output.needs_focal and not raw:
            depth = [with_outputs(self._to_metres(image, out, camera), out) for image, out in zip(images, depth)]
        return depth

    @property
    def extra_outputs(self) -> tuple:
        """The model's per-pixel outputs besides depth (``runtime.prediction``): ``("sky",)`` for
        DA3Mono/Metric, ``("depth_conf",)`` for the DA3 any-view networks, else none. ``predict``
        then returns a ``Prediction`` whose ``sky`` (mask) and ``confidence`` hold them."""
        return tuple(self._backend.extra_outputs)

    def stream(
        self,
        frames: Iterable[np.ndarray],
        rgb: bool | None = None,
        depth: int | None = None,
        stabilize: bool | Any = False,
        focal: float | None = None,
        intrinsics: Any = None,
    ) -> Iterator[np.ndarray]:
        """Depth for each frame of a video, in order, with several frames in flight: the
        pre-processing, inference and post-processing of neighbouring frames overlap, and as many
        model calls run at once as the backend allows (``streams``: OpenVINO streams, ONNX Runtime
        concurrent runs, TensorRT execution contexts; one otherwise).

        Up to ``depth`` frames are in flight (default: the backend's concurrency + 2); frames
        are read from the iterable only as results are consumed. Each result equals ``predict``
        on its frame. A Video Depth Anything model runs the frames one after another through its
        streaming step instead, each with the cached hidden states of the frames before it (as
        ``video_stream().push``). ``stabilize=True`` (or a ``runtime.align.Stabilizer``, to read its flicker
        figures afterwards) puts each frame's relative depth on the scale of the frames before it,
        so values and colours hold still. ``focal``/``intrinsics``: as ``predict``'s, for every frame.
        """
        from .align import Stabilizer

        self._backend.require_open()  # refused at the call, not at the first frame
        if focal is not None or intrinsics is not None:
            self._camera(focal, intrinsics)  # checked at the call too
        if self._backend.stream_names:  # Video Depth Anything: the cache carries frame to frame
            if stabilize:
                raise InputError("Video Depth Anything streams are steady by construction: drop stabilize")
            return stream_frames(self, iter(frames), rgb)  # its cache freed when the frames end
        stabilizer = Stabilizer() if stabilize is True else stabilize or None
        if stabilizer is not None and self.output.is_depth:
            raise InputError(f"the model outputs {self.output.describe()}: stabilize is for relative models")
        return self._pipelined(frames, lambda f: self.predict(f, rgb, focal, intrinsics), depth, stabilizer)

    def video_stream(self, max_gap: float | None = 1.0, name: str = "stream", rgb: bool | None = None) -> Any:
        """A ``runtime.video_stream.VideoStream`` (Video Depth Anything models): ``push(frame,
        stamp)`` frame by frame with the model's cached hidden states; one per camera."""
        return VideoStream(self, max_gap, name, rgb)

    def stream_batches(
        self,
        batches: Iterable[Sequence[np.ndarray]],
        rgb: bool | None = None,
        depth: int | None = None,
        raw: bool = False,
    ) -> Iterator[list[np.ndarray]]:
        """``stream`` for several cameras: each item is a list of frames (say the newest frame of
        each camera), run as one ``predict_batch`` (``raw`` as there); results come back in order,
        one list per item."""
        return self._pipelined(batches, lambda frames: self.predict_batch(frames, rgb, raw=raw), depth)

    def _pipelined(
        self,
        items: Iterable[Any],
        work: Callable[[Any], Any],
        depth: int | None,
        finish: Callable[[Any, Any], Any] | None = None,
    ) -> Iterator[Any]:
        depth = depth or self._backend.max_concurrency + 2
        pending: deque = deque()

        def result() -> Any:
            item, future = pending.popleft()
            out = future.result()
            return finish(item, out) if finish is not None else out

        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="depth-stream") as pool:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                if len(pending) >= depth:
                    yield result()
            while pending:
                yield result()

    def info(self) -> dict[str, Any]:
        """Backend, device, precision, input shape, library versions and what the model outputs."""
        return {
            **self._backend.info(),
            "model": self._source,
            "output": {**self.output.info(), **({"focal": list(self.camera)} if self.camera else {})},
            "input_size": self.input_size,
            "max_long_side": self.max_long_side,
            "verification": self.verification.to_dict() if self.verification is not None else None,
        }

    def close(self) -> None:
        try:  # the streams still open (GPU buffers with TensorRT) before the backend, which closes anyway
            close_streams(self)
        finally:
            self._backend.close()

    def __enter__(self) -> DepthPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        b = self._backend
        return f"DepthPredictor({self._source!r}, backend={b.name!r}, device={b.device!r}, precision={b.precision!r})"
