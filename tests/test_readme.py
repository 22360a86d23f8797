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

    shipped = RunConfig.model_validate(yaml.safe_load((ROOT / "vqa_ood_bench" / "configs" / "embedded.yaml").read_text()))
    assert shipped == default_config()


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_both_readme_commands_install_with_the_constraints_file():
    for cmd in readme_commands()[:2]:
        assert "pip install" in cmd and "-c constraints.txt" in cmd, cmd


def test_constraints_pin_every_dependency_inside_its_range():
    """Every runtime and extra requirement of pyproject.toml is pinned in constraints.txt, to a
    version its range admits; torch and torchvision to the pair that installs on the CPU here."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _constraints()
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for req in requirements:
        name = req.name.lower().replace("_", "-")
        if name == "vqa-ood-bench":  # dev's reference to the other extras
            continue
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req.specifier}"
