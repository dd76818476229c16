"""Every numeric option is checked when it is parsed: a value out of range (zero, negative, NaN,
infinite, huge) is one line naming the option and its range, exit code 2, before any work."""

from __future__ import annotations

import pytest

from commands.runner import command, stage


def _refused(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


PLAN = [
    ("--peak-tflops", "0", "a number above 0 and up to 1000000"),  # ZeroDivisionError before
    ("--peak-tflops", "-5", "a number above 0"),  # negative GPU-hours before
    ("--utilisation", "nan", "a number above 0 and up to 1"),  # NaN hours before
    ("--utilisation", "0", "a number above 0 and up to 1"),
    ("--images", "0", "a whole number from 1 to 100000"),
    ("--rounds", "0", "a whole number from 1 to 1000"),
]
TEACHER = [
    ("--batch-size", "0", "a whole number from 1 to 4096"),
    ("--save-every", "0", "a whole number from 1"),
    ("--lr", "nan", "a number above 0 and up to 1"),  # trained to NaN weights, exit 0, before
    ("--steps", "-3", "a whole number from 1"),
    ("--crop", "13", "a whole number from 14 to 4088"),  # exit 1 before
    ("--crop", "30", "not a multiple of 14"),
]
PSEUDO_LABEL = [
    ("--size", "0", "a whole number from 14 to 2044"),
    ("--size", "-14", "a whole number from 14 to 2044"),
    ("--size", "100000", "a whole number from 14 to 2044"),
]
BAG = [
    ("--max-time-offset", "1e300", "a number from 0 to 60"),  # OverflowError before
    ("--max-time-offset", "-1", "a number from 0 to 60"),
]


@pytest.mark.parametrize("option,value,rule", PLAN)
def test_train_plan(option, value, rule, capsys):
    from train.plan import build_parser

    line = _refused(build_parser().parse_args, [option, value], capsys)
    assert f"argument {option}: '{value}'" in line and rule in line


@pytest.mark.parametrize("option,value,rule", TEACHER)
def test_train_teacher_and_distill(option, value, rule, capsys):
    from train.distill import build_parser as distill
    from train.teacher import build_parser as teacher

    for parser, required in ((teacher(), []), (distill(), ["--labels", "labels"])):
        line = _refused(parser.parse_args, ["--output", "run", *required, option, value], capsys)
        assert f"argument {option}: '{value}'" in line and rule in line


def test_train_distill_weights(capsys):
    from train.distill import build_parser

    line = _refused(build_parser().parse_args, ["--output", "r", "--labels", "l", "--trim", "1.5"], capsys)
    assert "argument --trim: '1.5' is out of range: give a number from 0 to 0.99" in line


@pytest.mark.parametrize("option,value,rule", PSEUDO_LABEL)
def test_train_pseudo_label(option, value, rule, capsys):
    from train.pseudo_label import build_parser

    argv = ["--teacher", "t", "--source", "s", "--output", "o", option, value]
    line = _refused(build_parser().parse_args, argv, capsys)
    assert f"argument {option}: '{value}'" in line and rule in line


@pytest.mark.parametrize("option,value,rule", BAG)
def test_bag_tool(option, value, rule, capsys):
    from runtime.bag import parse_args

    argv = ["in.bag", "--output", "out.bag", "--model", "m.onnx", "--align-to", "/lidar", option, value]
    line = _refused(parse_args, argv, capsys)
    assert f"argument {option}: '{value}'" in line and rule in line


# Options the bag tool and the ROS 2 node share: one rule each (runtime.ros.settings.SHARED_OPTIONS).
# Before, the node parsed these as plain numbers and checked them only once rclpy had started (or,
# for the depth range's bounds, never on the command line): a bad value was an rclpy error here.
SHARED = [
    ("--depth-range", ["0", "5"], "'0': give a number of metres from 0.001 to 100000"),
    ("--depth-range", ["1", "nan"], "'nan': give a number of metres"),
    ("--depth-range", ["5", "1"], "--depth-range: the sensor depth range must be min < max, got 5.0..1.0"),
    ("--max-time-offset", ["1e300"], "'1e300' is out of range: give a number from 0 to 60"),
    ("--held-out", ["0.95"], "'0.95' is out of range: give a number from 0 to 0.9"),
    ("--hold", ["inf"], "'inf' is out of range: give a number at least 0"),
    ("--min-inliers", ["1"], "'1' is out of range: give a whole number at least 2"),
    ("--point-stride", ["0"], "'0': must be 1 or more"),
    ("--max-points", ["-1"], "'-1': must be 1 or more"),
]


@pytest.mark.parametrize("option,values,rule", SHARED)
def test_the_bag_tool_and_the_node_refuse_a_shared_option_alike(option, values, rule, capsys):
    from runtime.bag import parse_args as bag
    from runtime.ros.node import parse_args as node

    lines = []
    for parse, argv in ((bag, ["in.bag", "--output", "o", "--image-topic", "/cam"]), (node, [])):
        line = _refused(parse, [*argv, "--model", "m.onnx", option, *values], capsys)
        lines.append(line.split(" error: ", 1)[1])  # after the program's name
    assert lines[0] == lines[1] and rule in lines[0], lines


@pytest.mark.parametrize(
    "parameter,value,rule",
    [
        ("min_sensor_depth", 0.0, "min_sensor_depth/max_sensor_depth: '0.0': give a number of metres from 0.001"),
        ("max_time_offset", 1e300, "max_time_offset: '1e+300' is out of range: give a number from 0 to 60"),
        ("held_out", 0.95, "held_out: '0.95' is out of range: give a number from 0 to 0.9"),
        ("min_inliers", 1, "min_inliers: '1' is out of range: give a whole number at least 2"),
        ("point_stride", 0, "point_stride: '0': must be 1 or more"),
    ],
)
def test_the_nodes_ros_parameters_take_the_same_rules(parameter, value, rule):
    from runtime import InputError
    from runtime.ros.node import NodeSettings

    with pytest.raises(InputError) as refused:
        NodeSettings(model="m.onnx", **{parameter: value}).check()
    assert str(refused.value).startswith(rule)


def test_the_largest_held_out_share_the_commands_accept_runs():
    """0.9 is inside the options' range ("0 to 0.9"), so the alignment they configure takes it too."""
    from runtime.ros.node import NodeSettings
    from runtime.ros.settings import MAX_HELD_OUT

    NodeSettings(model="m.onnx", held_out=MAX_HELD_OUT, sparse_depth_type="points").check()
    from runtime.align import AlignSettings

    assert AlignSettings(held_out=MAX_HELD_OUT).held_out == MAX_HELD_OUT


def test_bag_tool_extrinsics_are_finite(capsys):
    from runtime.bag import parse_args

    argv = ["in.bag", "--output", "out.bag", "--model", "m.onnx", "--align-to", "/lidar"]
    line = _refused(parse_args, [*argv, "--extrinsics", "0", "0", "0", "inf", "0", "0"], capsys)
    assert "argument --extrinsics: 'inf' is out of range: give a number from -1000000 to 1000000" in line


def test_a_failure_between_steps_names_the_last_step_that_finished(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAV2_LOG_DIR", str(tmp_path))

    @command("python -m demo")
    def main(argv=None) -> int:
        with stage("writing the output bag"):
            pass
        raise RuntimeError("closing failed")  # "starting failed" before

    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the step after writing the output bag failed: RuntimeError: closing failed")
