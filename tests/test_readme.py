"""The README's two commands stay true: the CI script runs the README's test command verbatim,
and the shipped embedded config equals the CLI's built-in default."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_opens_with_two_commands():
    cmds = readme_commands()
    assert len(cmds) >= 2
    main, tests = cmds[0].strip(), cmds[1].strip()
    assert main.startswith("python3 -m venv .venv") and main.endswith("vqa-ood-bench run")
    assert tests.startswith("python3 -m venv .venv") and "pytest" in tests
    # The two commands come before any other section of the README.
    text = (ROOT / "README.md").read_text()
    assert text.index(tests) < text.index("\n## ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1].strip() in ci


def test_shipped_embedded_config_is_the_cli_default():
    from vqa_ood_bench.cli.cmd_run import default_config
    from vqa_ood_bench.config import RunConfig

    shipped = RunConfig.model_validate(yaml.safe_load((ROOT / "configs" / "embedded.yaml").read_text()))
    assert shipped == default_config()
