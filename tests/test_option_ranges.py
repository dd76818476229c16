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
