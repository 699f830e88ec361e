"""The finished package: one version, ``gobucket --version``, the demo's arguments, README links."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

import gobucket
from gobucket.cli.demo import MAX_SPEED, MIN_SPEED, _plan, check_speed, run_demo
from gobucket.cli.main import main
from gobucket.group import TaskBucketGroup

ROOT = Path(__file__).resolve().parents[2]
REPO_URL = "https://github.com/gobucket/gobucket-py"


def _pyproject() -> dict[str, typing.Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"gobucket {gobucket.__version__}"


def test_version_flag_works_as_a_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gobucket.cli import main; sys.exit(main())",
            "--version",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"gobucket \d+\.\d+\.\d+\S*\n", done.stdout)


def test_the_version_is_written_once() -> None:
    project = _pyproject()["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    assert _pyproject()["tool"]["hatch"]["version"]["path"] == "gobucket/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", gobucket.__version__)
    assert gobucket.__version__ in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_package_metadata_is_complete() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Development Status :: 3 - Alpha" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Repository", "Documentation", "Changelog", "Issues"} <= set(
        project["urls"]
    )
    assert (ROOT / "gobucket" / "py.typed").exists()


@pytest.mark.parametrize("speed", ["nan", "inf", "-inf", "0", "-1", "1e308", "abc", ""])
def test_demo_refuses_a_bad_speed_with_a_usage_error(
    speed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--speed", speed])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --speed" in err
    assert "Traceback" not in err


def test_speed_bounds_are_accepted_and_the_api_refuses_the_rest() -> None:
    assert check_speed(MIN_SPEED) == MIN_SPEED
    assert check_speed(MAX_SPEED) == MAX_SPEED
    for bad in (float("nan"), float("inf"), 0.0, -1.0, MAX_SPEED * 2):
        with pytest.raises(ValueError, match="must be a number"):
            run_demo(speed=bad, plain=True)


def test_demo_says_how_many_tasks_it_fills_and_fills_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    plan = _plan(1.0)
    assert run_demo(speed=4.0, plain=True) == 0
    out = capsys.readouterr().out
    match = re.search(r"filling (\d+) tasks", out)
    assert match is not None, out
    assert int(match.group(1)) == len(plan) == 12
    rows = [line for line in out.splitlines() if "::" in line and "│" in line]
    assert len(rows) == len(plan)
    assert "every task ended exactly once" in out


def test_group_fill_is_typed_by_block() -> None:
    overloads = typing.get_overloads(TaskBucketGroup.fill)
    returns = [typing.get_type_hints(fn)["return"] for fn in overloads]
    assert gobucket.Placement in returns
    assert any(getattr(r, "__origin__", None) is not None for r in returns)
    assert "block" in (TaskBucketGroup.fill.__doc__ or "")


def test_readme_links_work_on_a_package_index_page() -> None:
    """Every link in the README is absolute: a package index shows it without the repo."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert relative == []
    for target in targets:
        if target.startswith(f"{REPO_URL}/blob/main/") or target.startswith(
            f"{REPO_URL}/tree/main/"
        ):
            path = target.split("/main/", 1)[1].split("#", 1)[0]
            assert (ROOT / path).exists(), target
