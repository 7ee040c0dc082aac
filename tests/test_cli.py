import numpy as np
import pytest
from helpers import IMAGES
from PIL import Image

from dsseg.commands import main
from dsseg.commands.common import parse_param_values
from dsseg.commands.job import build_parser as job_parser
from dsseg.commands.job import job_from_args


def job_main(argv):
    return main(["job", *argv])


def one_line_error(capsys, command="job") -> str:
    """The error a command printed: one line naming the flag, then where to read more."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"dsseg {command}: error: "), lines
    assert lines[1] == f"(see: dsseg {command} --help)"
    return lines[0].removeprefix(f"dsseg {command}: error: ")


def test_dsseg_segment_writes_overlay_and_label_pngs(tmp_path, capsys):
    code = main(
        [
            "segment",
            str(IMAGES / "135069.jpg"),
            "--out",
            str(tmp_path),
            "--backbone",
            "tiny",
            "--param",
            "kl_threshold=0.5",
        ]
    )
    assert code == 0
    overlay = Image.open(tmp_path / "135069_overlay.png")
    labels = np.asarray(Image.open(tmp_path / "135069_labels.png"))
    assert overlay.size == (481, 321) and labels.shape == (321, 481)
    assert len(np.unique(labels)) > 1
    assert "segments in" in capsys.readouterr().out


def test_dsseg_segment_reports_bad_files_and_goes_on(tmp_path, capsys):
    code = main(["segment", str(IMAGES), "--out", str(tmp_path), "--backbone", "tiny", "--limit", "2"])
    assert code == 0  # corrupt.jpg failed: reported, and the run goes on (the job's rule too)
    assert "corrupt.jpg: error" in capsys.readouterr().err
    assert (tmp_path / "135069_overlay.png").exists()
    strict = main(["segment", str(IMAGES), "--out", str(tmp_path), "--backbone", "tiny", "--limit", "2", "--strict"])
    assert strict == 1


def test_wrong_flags_say_what_to_do(tmp_path, capsys):
    assert job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--param", "tau=1"]) == 2
    assert one_line_error(capsys).startswith("--param tau: is not a parameter of 'diffseg'")
    assert job_main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert one_line_error(capsys).startswith(f"--input: '{tmp_path / 'nope'}' does not exist")
    assert job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--noise", "gauss"]) == 2
    assert one_line_error(capsys).startswith("--noise: invalid choice: 'gauss'")
    assert main([]) == 2


@pytest.mark.parametrize(
    "command, argv, expected",
    [
        ("job", ["--param", "kl_threshold=-3"], "--param kl_threshold: must be > 0; got -3"),
        ("job", ["--limit", "0"], "--limit: expected an integer ≥ 1; got '0'"),
        ("job", ["--bogus"], "unrecognized arguments: --bogus"),
        (
            "job",
            ["--device", "cuda", "--batch-size", "0"],
            "--batch-size: expected a positive integer or auto; got '0'",
        ),
        ("segment", ["/nothere", "--out", "x"], "IMAGE_OR_DIR: '/nothere' does not exist"),
        ("evaluate", ["--dataset", "bsds500", "--root", "r", "--output", "o", "--limit", "0"], "--limit: expected an"),
        ("evaluate", ["--root", "r", "--output", "o"], "--dataset: required, or --preset"),
        (
            "pseudolabel",
            ["--input", "x", "--output", "o", "--ignore-margin", "-1"],
            "--ignore-margin: must be in (0, 1]",
        ),
        ("pseudolabel", ["--input", "x", "--output", "o", "--format", "png"], "--format: takes a comma-separated"),
        ("explore", ["/nonexistent"], "OUTPUT: /nonexistent: no such folder"),
        ("benchmark", ["--repeats", "0"], "--repeats: expected an integer ≥ 1; got '0'"),
        ("benchmark", ["--dtype", "float32,fp8"], "--dtype: expected comma-separated precisions from auto, float32"),
        ("benchmark", ["--method", "diffcut", "--versus", "diffseg"], "--versus: compares self-attention methods"),
        ("benchmark", ["--precision-study", "/nothere.jpg"], "--precision-study: /nothere.jpg: no such file"),
        ("compact", ["--target-mb", "0", "o"], "--target-mb: must be a number > 0"),
        ("manc-study", ["--powers", "0"], "--powers: expected comma-separated integers ≥ 1"),
    ],
)
def test_every_mistake_is_one_line_that_names_the_flag(command, argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths above name nothing that exists
    if command == "job":
        argv = ["--input", str(IMAGES), "--output", str(tmp_path / "out"), "--backbone", "tiny", *argv]
    if command == "pseudolabel" and "--ignore-margin" in argv:
        argv[1] = str(IMAGES)  # an input that exists: the refinement is checked by the weak job's method
        argv += ["--backbone", "tiny"]
    assert main([command, *argv]) == 2
    assert one_line_error(capsys, command).startswith(expected)


def test_evaluate_refuses_an_output_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "metrics.txt"
    afile.write_text("not a folder")
    argv = ["evaluate", "--dataset", "bsds500", "--root", str(tmp_path), "--output", str(afile)]
    assert main(argv) == 2
    assert (
        one_line_error(capsys, "evaluate")
        == f"--output: {afile} is a file; give a folder (new, or an earlier evaluation's)"
    )


def test_missing_weights_stop_the_job_before_ray_starts(tmp_path, capsys):
    code = job_main(
        ["--input", str(IMAGES), "--output", str(tmp_path), "--backbone", str(tmp_path / "sd"), "--offline"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "sd: no such folder" in error and "huggingface-cli download" in error
    assert not (tmp_path / "segments").exists()


def test_param_values_are_parsed_as_json():
    assert parse_param_values(["kl_threshold=0.9", "refine=true", "resolutions=[64,32]", "prompt=a cat"]) == {
        "kl_threshold": 0.9,
        "refine": True,
        "resolutions": (64, 32),
        "prompt": "a cat",
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_param_values(["kl_threshold"])


def test_run_file_gives_settings_and_configs_and_flags_override(tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(
        f"input: {IMAGES}\noutput: {tmp_path / 'out'}\nbackbone: tiny\nbatch_size: 8\nshard: 1/4\n"
        "configs:\n  - {method: diffseg, kl_threshold: 0.9}\n  - {method: diffseg, kl_threshold: [1.0, 1.0, 1.0]}\n  - {method: ncut, power: 2}\n"
    )
    job = job_from_args(job_parser().parse_args(["--config", str(run), "--batch-size", "2"]))
    assert job.batch_size == 2 and job.backbone == "tiny" and job.shard == (1, 4)
    assert [spec.method for spec in job.configs] == ["diffseg", "diffseg", "ncut"]
    assert job.configs[1].resolved.params.kl_threshold == (1.0, 1.0, 1.0) and job.configs[2].resolved.params.power == 2
    with pytest.raises(ValueError, match="not both"):
        job_from_args(job_parser().parse_args(["--config", str(run), "--method", "ncut"]))
    run.write_text("input: x\nthreads: 3\n")
    assert job_main(["--config", str(run)]) == 2
    assert "unknown key(s) ['threads']" in one_line_error(capsys)
    assert job_main(["--output", str(tmp_path)]) == 2
    assert one_line_error(capsys) == "--input: required (on the command line or in --config)"


def test_every_job_setting_has_a_flag_and_errors_name_it(tmp_path, capsys):
    from dsseg.job.config import RUN_FILE_KEYS

    assert RUN_FILE_KEYS - {"configs"} <= set(job_parser().flag_of)
    assert job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--max-pixels", "10"]) == 2
    assert one_line_error(capsys).startswith("--max-pixels: must be ≥ 64")  # the library said max_pixels


def test_a_bad_parameter_value_names_the_parameter_and_the_value(tmp_path, capsys):
    for param, expected in (
        ("kl_threshold=abc", "--param kl_threshold: expects a number (or a list of numbers); got 'abc'"),
        ("image_size=big", "--param image_size: expects a number; got 'big'"),
        ("refine=yes", "--param refine: expects true or false; got 'yes'"),
    ):
        assert job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--param", param]) == 2
        assert one_line_error(capsys).startswith(expected)


@pytest.mark.parametrize("command", ["segment", "job", "evaluate", "pseudolabel", "benchmark", "manc-study"])
def test_every_help_is_plain_text_and_names_the_default_backbone(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "``" not in text and "(default: None)" not in text
    if command not in ("manc-study",):
        unwrapped = " ".join(text.split()).replace("- ", "-")  # argparse may wrap after a hyphen
        assert "CompVis/stable-diffusion-v1-4" in unwrapped  # the default backbone, however wrapped


def test_the_library_never_sees_the_command_line():
    """Only dsseg.commands (and the dsseg.cli entry point) parse flags; the library takes typed
    settings, so it neither imports argparse nor the commands."""
    import ast
    from pathlib import Path

    import dsseg

    package = Path(dsseg.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "commands" or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [
                f"{path.relative_to(package)}: {n}"
                for n in names
                if n == "argparse" or n.startswith(("dsseg.cli", "dsseg.commands"))
            ]
    assert offenders == []


def test_presets_and_method_settings_resolve_without_torch():
    """Listing the presets, resolving a run's configs and their ids load no model code: the method
    configs are torch-free (dsseg.methods.configs); a method's module loads when it first runs."""
    import subprocess
    import sys

    script = (
        "import sys, contextlib, io\n"
        "from dsseg.commands import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['evaluate', '--list-presets']) == 0\n"
        "assert 'dwc-manc-ncut: COCO-Stuff-27' in out.getvalue()\n"
        "from dsseg.job.config import SegmentJob\n"
        "job = SegmentJob(input='x', output='y', configs=[{'method': m, 'power': 2} if m == 'ncut' else {'method': m} for m in ('diffseg', 'ncut')])\n"
        "assert len(set(job.config_ids())) == 2\n"
        "print(sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
