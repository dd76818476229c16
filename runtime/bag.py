"""``python -m runtime.bag``: depth and point clouds for the images in a ROS bag, written to a new bag.

The command: options, the plan made before the model loads (``runtime.ros.bag_plan``: the bag
opened and checked once), progress and the summary. The plan is run by ``runtime.ros.bag.run_plan``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from commands.errors import InputError
from commands.runner import CommandError, command

from .align.stabilize import flicker_lines
from .cli import add_predictor_args, build_predictor, check_metric_options, positive_int, topic_name
from .metric import OutputKind, ScaleShift, declared_output_kind
from .pointcloud import MAX_POINTS
from .ros.align import DEFAULT_MAX_TIME_OFFSET
from .ros.bag import STORAGES, BagPlan, CameraRequest, Summary, open_plan, run_plan
from .ros.messages import Conversion
from .ros.settings import (
    SHARED_OPTIONS,
    add_align_args,
    align_request,
    check_confidence,
    check_model_rules,
    check_parsed,
    published_outputs,
)
from .ros.topics import Topics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.bag",
        description="Depth (and point clouds) for the images of a ROS bag, written to a new bag: ROS 2 "
        "(.mcap or sqlite3 .db3 folder) or ROS 1 (.bag). Needs: pip install 'dav2-edge[ros]'.",
    )
    parser.add_argument("input", type=Path, help="the input bag: a ROS 2 bag folder or a ROS 1 .bag file")
    parser.add_argument(
        "--image-topic",
        action="append",
        required=True,
        help="sensor_msgs/Image or CompressedImage topic; repeat it for several cameras (one pass, each camera's "
        "depth under its own namespace, frames of equal size run as one batch)",
    )
    add_predictor_args(parser, "model file (.pth, .safetensors, .onnx, .xml, .engine)", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="the new bag (same ROS version as the input)")
    parser.add_argument(
        "--camera-info-topic",
        action="append",
        help="sensor_msgs/CameraInfo for point clouds (default: <ns>/camera_info, else, with one camera, the bag's "
        "only one). This and the three output topics below: once per --image-topic, in the same order, or not at all",
    )
    parser.add_argument(
        "--copy-topics",
        nargs="*",
        metavar="TOPIC",
        help="input topics copied byte for byte (default: the image and camera info topics; give none to copy none)",
    )
    parser.add_argument("--copy-all", action="store_true", help="copy every topic of the input")
    parser.add_argument(
        "--depth-topic",
        action="append",
        type=topic_name,
        help="relative inverse depth, 32FC1 (default <ns>/depth/relative_inverse)",
    )
    parser.add_argument(
        "--metric-depth-topic",
        action="append",
        type=topic_name,
        help="metric depth in metres, 32FC1 (default <ns>/depth/image)",
    )
    parser.add_argument(
        "--points-topic", action="append", type=topic_name, help="PointCloud2 (default <ns>/depth/points)"
    )
    parser.add_argument(
        "--metric-scale",
        type=float,
        help="metric disparity (1/m) = scale * relative + shift: publish metric depth and, with camera info, "
        "points (fit them with runtime.fit_scale_shift on a few known distances)",
    )
    parser.add_argument("--metric-shift", type=float, default=0.0, help="see --metric-scale (default 0)")
    parser.add_argument(
        "--point-stride",
        type=SHARED_OPTIONS["point_stride"],
        default=1,
        help="use every Nth pixel in x and y for points",
    )
    parser.add_argument(
        "--max-points",
        type=SHARED_OPTIONS["max_points"],
        default=MAX_POINTS,
        help=f"most points per cloud (default {MAX_POINTS:,}: a whole 1920x1080 frame); larger frames take every "
        "Nth pixel, said in the summary",
    )
    parser.add_argument("--max-range", type=float, help="drop points farther than this (metres, along z)")
    parser.add_argument("--no-point-colors", action="store_true", help="points without the rgb field")
    parser.add_argument(
        "--every", type=positive_int, default=1, help="process every Nth image message of each camera (default 1)"
    )
    parser.add_argument(
        "--max-frames", type=positive_int, help="stop after this many frames of each camera (the output ends there)"
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="also write the model's depth confidence, 32FC1, unitless, larger = surer, beside each depth image "
        "(<ns>/depth/confidence; models with that output: DA3-Small/Base)",
    )
    parser.add_argument("--storage", choices=STORAGES, help="ROS 2 output storage (default: the input's)")
    add_align_args(parser, DEFAULT_MAX_TIME_OFFSET)
    args = parser.parse_args(argv)
    if args.copy_all and args.copy_topics is not None:
        parser.error("give --copy-topics or --copy-all, not both")
    if args.align_to is not None and args.metric_scale is not None:
        parser.error("give --align-to (a fit per frame) or --metric-scale (constants for the whole bag), not both")
    try:
        check_metric_options(args.metric_scale, args.metric_shift, args.max_range)
    except InputError as exc:
        parser.error(str(exc))
    check_parsed(args, parser.error)
    return args


def _check_request(args: argparse.Namespace) -> BagPlan:
    """The run's plan, made before the model loads: the bag opened once, its topics, the sensor and
    its transforms, and the output checked (the plan is open: close it)."""
    align = align_request(args)  # usage errors in the alignment options, before the bag is read
    request = CameraRequest(
        args.image_topic,
        args.camera_info_topic,
        args.depth_topic,
        args.metric_depth_topic,
        args.points_topic,
        args.copy_topics,
        args.copy_all,
    )
    # What the run writes, from the same rule as FramePipeline.outputs and with what the artefact
    # says it outputs (its ONNX metadata or rt_info, its sidecar) before it loads. A checkpoint
    # that says it only at load is planned with no outputs (no clash refused on a guess); the
    # plan is checked again once the model is loaded (BagPlan.expect), before anything is written.
    kind = declared_output_kind(args.model, args.output_kind, args.max_depth)
    constants, aligned = args.metric_scale is not None, args.align_to is not None
    writes = [] if kind is None else published_outputs(kind, constants, aligned, args.confidence)
    options = {"storage": args.storage, "align_to": args.align_to, "align_options": align}
    return open_plan(request, args.input, args.output, writes=writes, **options)


@command("python -m runtime.bag", sigterm=True)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with _check_request(args) as plan:
        return _run(args, plan)


def _run(args: argparse.Namespace, plan: BagPlan) -> int:
    metric = None if args.metric_scale is None else ScaleShift(args.metric_scale, args.metric_shift, math.nan, 0)
    from tqdm import tqdm

    aligner = plan.aligner
    predictor = build_predictor(args, args.model)
    # What the model outputs decides what may be published: refused here, before any progress bar.
    check_model_rules(predictor.output, Conversion(metric), args.stabilize, args.align_to is not None)
    check_confidence(predictor.extra_outputs, args.confidence)
    plan.expect(published_outputs(predictor.output, metric is not None, aligner is not None, args.confidence))
    if predictor.output.needs_focal:
        print(
            f"note: the model outputs {predictor.output.describe()}: metres from each frame's camera info, "
            "none for frames without one"
        )
    elif predictor.output.is_metric and aligner is not None:
        print(
            f"note: the model outputs {predictor.output.describe()} ({predictor.output.source}): its scale is "
            f"corrected frame by frame against {args.align_to} (frames without a fit: the model's own metres)"
        )
    elif predictor.output.is_metric:
        print(f"note: the model outputs {predictor.output.describe()} ({predictor.output.source}): published as it is")
    elif metric is None and aligner is None:
        print(
            "note: no --metric-scale or --align-to: publishing relative inverse depth only, no metric depth or points"
        )
    for topics in plan.cameras:
        if topics.camera_info is None and predictor.output.needs_focal:
            print(f"note: no camera info for {topics.image} in the bag: no metres for it (they need the focal length)")
        elif topics.camera_info is None and (metric is not None or predictor.output.is_metric):
            print(f"note: no camera info for {topics.image} in the bag: no point clouds for it")
    conversion = Conversion(metric, args.point_stride, args.max_range, not args.no_point_colors, args.max_points)
    conversion.confidence = args.confidence
    desc = ", ".join(topics.image for topics in plan.cameras)
    with tqdm(total=plan.frames(args.every, args.max_frames), unit="frame", desc=desc, dynamic_ncols=True) as bar:
        summary = run_plan(
            plan,
            predictor,
            conversion,
            every=args.every,
            max_frames=args.max_frames,
            progress=bar.update,
            warn=lambda text: bar.write(f"warning: {text}", file=sys.stderr),
            stabilize=args.stabilize,
        )
    cameras = plan.cameras
    _report(args.output, cameras, conversion, summary, predictor.output, plan.writes)
    empty = [topics.image for topics in cameras if not summary.cameras[topics.image].frames]
    if not summary.frames:
        raise CommandError(f"no frame of {', '.join(empty)} could be decoded: nothing was written to {args.output}")
    if empty:
        raise CommandError(
            f"no frame of {', '.join(empty)} could be decoded: {args.output} holds the other cameras' depth"
        )
    if aligner is not None and not summary.metric:
        raise CommandError(
            f"no frame got metric depth from --align-to {args.align_to} (the reasons are above): {args.output} "
            "holds no metres; check the sensor's topic, its transform and --max-time-offset"
        )
    return 0


def _report(
    output: Path, cameras: list[Topics], conversion: Conversion, summary: Summary, kind: OutputKind, writes: list[str]
) -> None:
    """``writes``: what the run published per camera (``BagPlan.writes``), the topics listed."""
    lines = []
    if summary.frames:
        several = f" of {len(cameras)} cameras" if len(cameras) > 1 else ""
        lines.append(f"wrote {output}: {summary.frames} frames{several} at {summary.fps:.2f} frames/s")
    for topics in cameras:
        camera = summary.cameras[topics.image]
        if len(cameras) > 1:  # a heading per camera; the lines under it name its own topics
            lines.append(f"  {topics.image}: {camera.frames} frames")
        lines += _camera_lines(topics, conversion, camera, kind, summary.alignment, writes)
        if summary.alignment is not None and topics.image in summary.alignment.logs:  # its own fits
            lines += summary.alignment.logs[topics.image].lines(summary.alignment.topic)
    if summary.alignment is not None and summary.alignment_json is not None:  # none when nothing was written
        lines.append(f"    per-frame record: {summary.alignment_json}")
    if summary.frames:
        lines.append(f"  copied {summary.copied} messages of {', '.join(cameras[0].copy) or 'no topics'}")
    if lines:
        print("\n".join(lines))


def _camera_lines(
    topics: Topics, conversion: Conversion, camera: Summary, kind: OutputKind, alignment: object, writes: list[str]
) -> list[str]:
    """The summary's lines on one camera's topics: those in ``writes``, the metres' source named."""
    lines = []
    if camera.frames and "relative" in writes:
        lines.append(f"  {topics.relative}: {camera.frames} relative inverse depth images (32FC1, unitless)")
    if camera.frames and "metric" in writes and (camera.metric or alignment is not None):
        source = _source(kind, alignment)
        lines.append(f"  {topics.metric}: {camera.metric} depth images in metres (32FC1, REP 118) from {source}")
        if camera.points:
            per_frame = camera.point_bytes / camera.points / 1e6
            lines.append(f"  {topics.points}: {camera.points} point clouds, {per_frame:.2f} MB each on average")
        if camera.thinned_clouds:
            lines.append(
                f"  {camera.thinned_clouds} clouds thinned (stride up to {camera.largest_stride} in x and y) "
                f"to stay within --max-points {conversion.max_points:,}"
            )
        if camera.frames_without_camera_info:
            lines.append(f"  {camera.frames_without_camera_info} frames without usable camera info: no points")
        if camera.sky_pixels:
            lines.append(f"    {camera.sky_pixels} sky pixels published as +inf (REP 117), none in the point clouds")
    if camera.confidence and "confidence" in writes:
        lines.append(f"  {topics.confidence}: {camera.confidence} depth confidence images (32FC1, larger = surer)")
    if camera.camera_infos_skipped:
        lines.append(f"  skipped {camera.camera_infos_skipped} camera info messages that could not be used")
    lines += flicker_lines(camera.flicker, camera.flicker_unstabilized, camera.flicker_collapsed)
    if camera.skipped:
        lines.append(f"  skipped {len(camera.skipped)} image messages (undecodable, or a repeated stamp), e.g.:")
        lines += [f"    at {t} ns: {reason}" for t, reason in camera.skipped[:3]]
    return lines


def _source(kind: OutputKind, alignment: object) -> str:
    """Where a run's metres came from, for the summary."""
    corrected = ", its scale corrected per frame" if alignment else ""
    if kind.is_metric:
        return "the model's output" + corrected
    if kind.needs_focal:
        return "the model's output and each frame's camera info (focal length)" + corrected
    return "a fit per frame" if alignment else "--metric-scale"


if __name__ == "__main__":
    sys.exit(main())
