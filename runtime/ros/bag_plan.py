"""The plan of one ``runtime.bag`` run, made once: the input bag opened, each camera's topics
(``plan_cameras``), what the run writes, the output's storage and, for ``--align-to``, the
sensor's index and tf structure (``BagAligner``). The plan is one object, handed as it is to the
pass (``runtime.ros.bag_pass``) and the writer (``runtime.ros.bag_writer``); the bag is never
opened or planned a second time.

    with open_plan(request, "in.mcap", "out.mcap", writes=["relative"]) as plan:
        summary = run_plan(plan, predictor, conversion)   # runtime.ros.bag
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commands.errors import InputError, require

from ..io.files import check_writable_folder
from .topics import DEPTH_WRITES, WRITES, Topics, plan_cameras

STORAGES = ("mcap", "sqlite3")
_STORAGE_SUFFIX = {".mcap": "mcap", ".db3": "sqlite3"}
_ROSBAGS_NOTE = "rosbags needs Python >= 3.10"


def rosbags_modules() -> Any:
    """The ``rosbags`` modules this tool uses, or an error naming the extra."""
    require("rosbags", "ros", "rosbags (reading and writing ROS bags)", _ROSBAGS_NOTE)
    import rosbags.highlevel
    import rosbags.rosbag1
    import rosbags.rosbag2
    import rosbags.serde
    import rosbags.typesys

    return rosbags


def output_storage(input_path: Path, output: Path, storage: str | None, is_ros2: bool) -> str:
    """``"rosbag1"``, ``"mcap"`` or ``"sqlite3"`` for the output, checked against the input."""
    if not is_ros2:
        if output.suffix != ".bag":
            raise InputError(f"the input is a ROS 1 bag, so the output must be a .bag file too, got {output}")
        if storage is not None:
            raise InputError("--storage chooses a ROS 2 storage; a ROS 1 input gives a ROS 1 .bag")
        return "rosbag1"
    if output.suffix == ".bag":
        raise InputError(
            f"the input is a ROS 2 bag, so the output is a ROS 2 bag folder, not a .bag file: {output} "
            "(copied messages stay in their CDR bytes)"
        )
    if storage is not None:
        return storage
    if input_path.is_dir():
        found = {_STORAGE_SUFFIX[p.suffix] for p in input_path.iterdir() if p.suffix in _STORAGE_SUFFIX}
        return found.pop() if len(found) == 1 else "mcap"
    return _STORAGE_SUFFIX.get(input_path.suffix, "mcap")


def open_bag(rb: Any, path: Path) -> Any:
    """An open ``AnyReader`` for a ROS 1 or ROS 2 bag, or an ``InputError`` saying why not."""
    if not path.exists():
        raise InputError(f"no such bag: {path}")
    # Used only for bags that carry no message definitions (old ROS 2 recordings).
    store = rb.typesys.get_typestore(rb.typesys.Stores.ROS2_HUMBLE)
    try:
        reader = rb.highlevel.AnyReader([path], default_typestore=store)
        reader.open()
    except (rb.highlevel.AnyReaderError, rb.rosbag1.ReaderError, rb.rosbag2.ReaderError, OSError) as exc:
        raise InputError(f"cannot read {path} as a ROS bag: {exc}") from exc
    return reader


def check_output(input_path: Path, output: Path) -> None:
    if output.exists() or output.is_symlink():
        raise InputError(f"{output} exists; choose another --output or remove it (bags are never overwritten)")
    if output.resolve() == input_path.resolve():
        raise InputError("the output must differ from the input bag")
    check_writable_folder(output.parent, "--output")


@dataclass
class CameraRequest:
    """The cameras asked for: image topics, and per camera (``None``, or one per image topic in
    the same order) camera info and output topics; the topics to copy."""

    images: list[str]
    camera_infos: Sequence[str] | None = None
    relatives: Sequence[str] | None = None
    metrics: Sequence[str] | None = None
    points: Sequence[str] | None = None
    copy: list[str] | None = None
    copy_all: bool = False

    def plan(self, types: dict[str, str], writes: Collection[str]) -> list[Topics]:
        per_camera = (self.camera_infos, self.relatives, self.metrics, self.points)
        return plan_cameras(types, self.images, *per_camera, copy=self.copy, copy_all=self.copy_all, writes=writes)


@dataclass
class BagPlan:
    """One run's plan (see the module doc); :meth:`close` closes the bag."""

    rb: Any  # the rosbags modules
    input: Path
    output: Path
    reader: Any  # the input bag, open
    request: CameraRequest
    types: dict[str, str]  # topic -> message type
    counts: dict[str, int]  # topic -> messages
    writes: list[str]  # what the run publishes per camera: relative, metric, points, confidence
    cameras: list[Topics]
    storage: str  # the output's: rosbag1, mcap or sqlite3
    aligner: Any = None  # a prepared BagAligner (--align-to)
    notes: list[str] = field(default_factory=list)

    @property
    def copy(self) -> list[str]:
        """The topics copied byte for byte (one list for every camera)."""
        return self.cameras[0].copy

    def frames(self, every: int = 1, max_frames: int | None = None) -> int:
        """Frames the run will handle, over its cameras (for a progress bar)."""
        total = 0
        for topics in self.cameras:
            frames = -(-self.counts[topics.image] // every)
            total += min(frames, max_frames) if max_frames else frames
        return total

    def expect(self, writes: Collection[str]) -> None:
        """The run writes ``writes`` (known once the model is loaded): the topics are checked again
        against the bag's, kept from the plan (a metric model writes no relative depth; a recorded
        topic under an output's name may then be copied, or clash)."""
        writes = [key for key in WRITES if key in writes]
        if writes != self.writes:
            self.cameras, self.writes = self.request.plan(self.types, writes), writes

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> BagPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_plan(
    request: CameraRequest,
    input_path: str | Path,
    output: str | Path,
    *,
    writes: Collection[str] = DEPTH_WRITES,
    storage: str | None = None,
    align_to: str | None = None,
    align_options: dict[str, Any] | None = None,
) -> BagPlan:
    """Open the bag and plan the run (``InputError`` for a request that cannot work, nothing
    written). ``writes``: what the run publishes, as far as is known before the model loads;
    ``align_options``: ``BagAligner.prepare``'s keyword arguments."""
    from .bag_align import BagAligner

    rb = rosbags_modules()
    input_path, output = Path(input_path), Path(output)
    check_output(input_path, output)
    reader = open_bag(rb, input_path)
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        counts = {t: sum(c.msgcount for c in reader.connections if c.topic == t) for t in types}
        writes = [key for key in WRITES if key in writes]
        cameras = request.plan(types, writes)
        kind = output_storage(input_path, output, storage, reader.is2)
        plan = BagPlan(rb, input_path, output, reader, request, types, counts, writes, cameras, kind)
        if align_to is not None:
            infos = {topics.image: topics.camera_info for topics in cameras}
            plan.aligner = BagAligner.prepare(reader, align_to, infos, **(align_options or {}))
            plan.notes = list(plan.aligner.notes)
        return plan
    except BaseException:
        reader.close()
        raise
