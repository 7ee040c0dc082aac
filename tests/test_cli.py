import numpy as np
import pytest
from helpers import IMAGES
from PIL import Image

from dsseg.cli import job_from_args, job_main, job_parser, main, parse_param_values


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
    with pytest.raises(SystemExit) as info:
        job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--param", "tau=1"])
    assert info.value.code == 2
    assert "--param tau: is not a parameter of 'diffseg'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job_main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path)])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--noise", "gauss"])
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 2


def test_missing_weights_stop_the_job_before_ray_starts(tmp_path, capsys):
    code = job_main(
        ["--input", str(IMAGES), "--output", str(tmp_path), "--backbone", str(tmp_path / "sd"), "--offline"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "has no unet/config.json" in error and "huggingface-cli download" in error
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
    with pytest.raises(SystemExit):
        job_main(["--config", str(run)])
    assert "unknown key(s) ['threads']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job_main(["--output", str(tmp_path)])
    assert "--input required" in capsys.readouterr().err


def test_every_job_setting_has_a_flag_and_errors_name_it(tmp_path, capsys):
    from dsseg.cli import flags_of, job_parser
    from dsseg.job.config import RUN_FILE_KEYS

    assert RUN_FILE_KEYS - {"configs"} <= flags_of(job_parser())
    with pytest.raises(SystemExit):
        job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--max-pixels", "10"])
    assert "--max-pixels: must be ≥ 64" in capsys.readouterr().err  # the library said max_pixels


def test_a_bad_parameter_value_names_the_parameter_and_the_value(tmp_path, capsys):
    for param, expected in (
        ("kl_threshold=abc", "--param kl_threshold: expects a number (or a list of numbers); got 'abc'"),
        ("image_size=big", "--param image_size: expects a number; got 'big'"),
        ("refine=yes", "--param refine: expects true or false; got 'yes'"),
    ):
        with pytest.raises(SystemExit):
            job_main(["--input", str(IMAGES), "--output", str(tmp_path), "--param", param])
        assert expected in capsys.readouterr().err


@pytest.mark.parametrize("command", ["segment", "job", "evaluate", "pseudolabel", "benchmark", "manc-study"])
def test_every_help_is_plain_text_and_names_the_default_backbone(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "``" not in text and "(default: None)" not in text
    if command not in ("manc-study",):
        unwrapped = " ".join(text.split()).replace("- ", "-")  # argparse may wrap after a hyphen
        assert "CompVis/stable-diffusion-v1-4" in unwrapped  # the default backbone, however wrapped
