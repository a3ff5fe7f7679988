"""The newcomer's contract: the README's test command is what CI runs, and the README's file tree
names every file of the package and of the tests."""
import re

from conftest import ROOT


def readme():
    return (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```sh\n(.*?)```", readme(), re.S)
    test_command = next(line for block in blocks for line in block.splitlines() if "pytest" in line)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command.strip() in ci_lines


def test_readme_tree_names_every_file():
    tree = readme().split("## What is in the box", 1)[1].split("```")[1]
    files = {path.name for folder in ("microgpt", "tests") for path in (ROOT / folder).rglob("*.py")}
    missing = sorted(files - {"__init__.py", "conftest.py"} - set(re.findall(r"[\w.]+\.py", tree)))
    assert not missing, f"README's file tree does not mention: {missing}"
