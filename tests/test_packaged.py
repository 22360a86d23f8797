"""What ships inside the package: run configs by name (``--config paper/vqa-digrap``) and the
leaderboard entries as the default folder when there is no ``./leaderboards``.
(tests/test_wheel.py checks the same from a built wheel installed outside the repository.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqa_ood_bench import configs
from vqa_ood_bench.cli import main
from vqa_ood_bench.config import load_config
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.report.leaderboard import ENV_DIR, default_dir, load_entries

PACKAGE = Path(configs.__file__).resolve().parents[1]


def test_packaged_config_names():
    names = configs.names()
    assert "embedded" in names and "paper/vqa-digrap" in names and "paper/domainnet-zeroshot" in names
    assert len([n for n in names if n.startswith("paper/")]) == 20
    assert configs.path("paper/vqa-digrap") == configs.path("paper/vqa-digrap.yaml") == PACKAGE / "configs" / "paper" / "vqa-digrap.yaml"
    assert configs.path("nosuch") is None and configs.path("../pyproject") is None and configs.path("paper/../embedded") is None


def test_config_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("paper/vqa-digrap") == load_config(PACKAGE / "configs" / "paper" / "vqa-digrap.yaml")
    assert load_config("embedded").model == "tiny"
    # a file of that name wins over the packaged config
    (tmp_path / "embedded").write_text("seed: 7\n")
    assert load_config("embedded").seed == 7


def test_unknown_config_lists_the_packaged_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no config file 'paper/nosuch' and no packaged config of that name.*paper/vqa-digrap"):
        load_config("paper/nosuch")
    assert main(["run", "--config", "nosuch", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "embedded, " in err and "paper/vqa-digrap" in err


def test_default_leaderboards_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    packaged = PACKAGE / "leaderboards"
    assert default_dir() == packaged
    with pytest.raises(ConfigError, match="to write to"):  # `leaderboard add` starts ./leaderboards instead
        default_dir(writable=True)
    (tmp_path / "leaderboards").mkdir()
    assert default_dir() == default_dir(writable=True) == Path("leaderboards")
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "elsewhere"))
    assert default_dir() == default_dir(writable=True) == tmp_path / "elsewhere"


def test_show_reads_the_packaged_entries_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "show", "--json"]) == 0
    shown = {e["entry_id"] for e in json.loads(capsys.readouterr().out)}
    assert shown == {e.entry_id for _, e in load_entries(PACKAGE / "leaderboards")}
    assert "paper-tab3-digrap" in shown and "embedded-vanilla-lora-s0" in shown
