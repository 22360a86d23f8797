"""Every usage error of the CLI: one line on stderr, a non-zero exit code, no traceback, and for
`run` no slow work (suite loading, model loading, training) before the bad value is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vqa_ood_bench.cli import main
from vqa_ood_bench.errors import DataError


class SlowWorkStarted(Exception):
    """Raised by the stand-ins for the slow steps: a bad value got past validation."""


@pytest.fixture
def no_slow_work(monkeypatch):
    """Make every slow step of `run` fail loudly, so a late check cannot pass for an early one."""
    from vqa_ood_bench import runner
    from vqa_ood_bench.cli import cmd_run
    from vqa_ood_bench.data.suite import Suite

    def slow(*args, **kwargs):
        raise SlowWorkStarted

    monkeypatch.setattr(runner, "run_benchmark", slow)
    monkeypatch.setattr(runner, "load_model", slow)
    monkeypatch.setattr(cmd_run, "run_sweep", slow)
    monkeypatch.setattr(Suite, "load", slow)


def assert_one_line(err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def non_utf8_config(tmp: Path) -> Path:
    path = tmp / "latin1.yaml"
    path.write_bytes("method: vanilla\nprompt: 'r\xe9ponse {question}'\n".encode("latin-1"))
    return path


def config_with(text: str):
    def make(tmp: Path) -> Path:
        path = tmp / "run.yaml"
        path.write_text(text)
        return path

    return make


CASES = {
    # click/typer usage errors (typer's own click copy raises them)
    "limit-zero": (["run", "--limit", "0"], ["--limit"]),
    "unknown-option": (["run", "--bogus"], ["--bogus"]),
    "seed-not-int": (["run", "--seed", "abc"], ["--seed"]),
    "score-without-options": (["score"], ["Missing"]),
    "seed-negative": (["run", "--seed", "-1"], ["--seed"]),
    "seed-too-big": (["run", "--seed", str(2**32)], ["--seed"]),
    "epochs-zero": (["run", "--epochs", "0"], ["--epochs", "> 0"]),
    "epochs-nan": (["run", "--epochs", "nan"], ["--epochs"]),
    "epochs-inf": (["run", "--epochs", "inf"], ["--epochs"]),
    # method parameters of the wrong type
    "digrap-mu-string": (["run", "--method", "digrap", "--param", "mu=abc"], ["--param", "mu must be a number", "'abc'"]),
    "wise-alpha-string": (["run", "--method", "wise-ft", "--param", "alpha=abc"], ["--param", "alpha must be a number"]),
    "digrap-omega-string": (["run", "--method", "digrap", "--param", "omega=abc"], ["--param", "omega must be a number"]),
    "log-every-fraction": (["run", "--method", "digrap", "--param", "log_every=1.5"], ["log_every must be an integer"]),
    "tpgm-bool-for-number": (["run", "--method", "tpgm", "--param", "gamma_lr=true"], ["gamma_lr must be a number"]),
    # other run options
    "model-folder-missing": (["run", "--model", "./no/such/model"], ["--model", "no such folder"]),
    "model-empty": (["run", "--model", ""], ["--model"]),
    # config files
    "config-not-utf8": (["run", "--config", non_utf8_config], ["latin1.yaml", "UTF-8"]),
    "config-not-a-mapping": (["run", "--config", config_with("- vanilla\n")], ["run.yaml", "mapping"]),
    "config-negative-seed": (["run", "--config", config_with("seed: -1\n")], ["run.yaml", "seed"]),
    "config-param-string": (["run", "--config", config_with("method: ftp\nmethod_params: {mu: abc}\n")], ["run.yaml", "method_params", "mu must be a number"]),
    "config-unknown-variant": (["run", "--config", config_with("scoring_variant: nosuch\n")], ["run.yaml", "unknown scoring variant 'nosuch'"]),
    "config-data-root-missing": (["run", "--config", config_with("data_root: /no/such/folder\n")], ["run.yaml", "data_root", "is not a folder"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_usage_errors_give_one_line_before_any_slow_work(case, capsys, tmp_path, no_slow_work) -> None:
    argv, fragments = CASES[case]
    argv = [str(a(tmp_path)) if callable(a) else a for a in argv]
    assert main(argv) == 2
    assert_one_line(capsys.readouterr().err, *fragments)


def test_valid_edge_values_reach_the_run(capsys, monkeypatch, tmp_path) -> None:
    """The checks above reject bad values only: the extremes of the valid ranges get through."""
    from vqa_ood_bench import runner

    seen = {}

    def fake_run(cfg, out, **kw):
        seen["cfg"] = cfg
        raise SlowWorkStarted

    monkeypatch.setattr(runner, "run_benchmark", fake_run)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: digrap\nmethod_params: {mu: 1e-2}\n")  # YAML 1.1 reads 1e-2 as a string
    argv = ["run", "--config", str(cfg), "--seed", str(2**32 - 1), "--epochs", "0.01", "--limit", "1", "--param", "omega=null"]
    with pytest.raises(SlowWorkStarted):
        main(argv)
    run_cfg = seen["cfg"]
    assert run_cfg.seed == 2**32 - 1 and run_cfg.train.epochs == 0.01 and run_cfg.limit == 1
    assert run_cfg.method_params == {"mu": "1e-2", "omega": None}


def test_method_parameters_get_the_type_of_their_default() -> None:
    from vqa_ood_bench.errors import ConfigError
    from vqa_ood_bench.methods.base import get_method

    params = get_method("digrap", mu="1e-2", log_every=2.0, omega=None).params
    assert (params["mu"], params["log_every"], params["omega"]) == (0.01, 2, None)
    assert isinstance(params["log_every"], int)
    assert get_method("tpgm", norm="mars").params["norm"] == "mars"  # non-numeric parameters pass as they are
    for name, params in [("ftp", {"k": "x"}), ("l2-sp", {"lam": [1]}), ("mars-sp", {"radius": float("nan")}),
                         ("lp-ft", {"lp_fraction": False}), ("tpgm", {"max_iters": 1.5})]:
        with pytest.raises(ConfigError, match=f"method {name!r}: {next(iter(params))} must be"):
            get_method(name, **params)


def test_help_still_works(capsys) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--seed" in out and "--epochs" in out


def test_bare_command_shows_help_not_a_traceback(capsys) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Usage" in text and "run" in text and "Traceback" not in text


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--limit", "0"], "--limit"),
    (["run", "--seed", "-1"], "--seed"),
    (["score"], "Missing"),
])
def test_usage_errors_in_a_real_process(argv, fragment) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vqa_ood_bench", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr, fragment)


# --- images --------------------------------------------------------------------------------------


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    return path


def test_image_loads_under_the_pixel_limit(png) -> None:
    from vqa_ood_bench.data.records import VQARecord

    assert VQARecord(question_id="q1", image=png, question="?").load_image().size == (40, 40)


@pytest.mark.parametrize("limit", [40 * 40 // 3, 40 * 40 - 1], ids=["over-twice-the-limit", "between-limit-and-twice"])
def test_decompression_bomb_is_a_data_error(png, monkeypatch, limit) -> None:
    """PIL raises above twice MAX_IMAGE_PIXELS and only warns between the limit and twice it;
    both are refused with the file and the record named."""
    from vqa_ood_bench.data.records import VQARecord

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError) as info:
        VQARecord(question_id="q1", image=png, question="?").load_image()
    message = str(info.value)
    assert str(png) in message and "q1" in message and "decompression bomb" in message


def test_embedded_suite_opens_images_through_the_same_check(png, monkeypatch) -> None:
    from vqa_ood_bench.data.embedded.build import ReferenceModel

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="decompression bomb"):
        ReferenceModel._pixels(png)


def test_unreadable_image_is_a_data_error(tmp_path) -> None:
    from vqa_ood_bench.data.records import open_image

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image"):
        open_image(bad, record="q9")
    with pytest.raises(DataError, match="not found"):
        open_image(tmp_path / "missing.png")
