"""The README's shell blocks run as copied, in order, on a fresh clone after `make install`:
every python/torchrun/tensorboard is the venv's (.venv/bin/...), every script and `make` target
exists, and every path a command names is in the repository, a /path/to/ placeholder, or made by
an earlier command of the README (a run's folder, converted records, an --out file)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_PROGRAMS = ("python", "python3", "torchrun", "tensorboard", "pip", "pytest", "ruff")
FOLDERS = ("configs", "tools", "train", "runs", "data", "docs", "bench", "build", "tests",
           "records", "pipelines", "models")
MADE_HERE = ("runs", "data", "build")  # never in a fresh clone, whatever this checkout holds


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[list[str]]:
    """Each command line of the README's bash blocks as shell words, comments dropped,
    continuation lines joined."""
    found = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(words)
    return found


def make_targets() -> set[str]:
    """The Makefile's targets; its `dataset-%` rule makes one per dataset of the table."""
    from records.datasets import DATASETS

    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z0-9-]+):", text, flags=re.M))
    if re.search(r"^dataset-%:", text, flags=re.M):
        targets |= {f"dataset-{name}" for name in DATASETS}
    return targets


def made_by(words: list[str]) -> set[str]:
    """The paths a README command creates (prefixes: a run's folder covers its files)."""
    made = {w for flag, w in zip(words, words[1:]) if flag == "--out"}
    settings = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    args = shlex.split(settings.get("ARGS", ""))
    if words[0] == "make":
        target = words[1]
        if target == "quickstart":
            made |= {"runs/quickstart", "data/records/cifar10"}
        if target.startswith("dataset-"):  # the folder dataset's records are named NAME
            made.add(f"data/records/{settings.get('NAME', target.removeprefix('dataset-'))}")
        if target == "reproduce-cifar":
            budget = args[args.index("--budget") + 1] if "--budget" in args else None
            made.add(f"runs/reproduce-cifar-budget{budget}" if budget else "runs/reproduce-cifar")
    elif "train/run.py" in words and "run.name" in settings:
        made.add(f"{settings.get('run.out_dir', 'runs')}/{settings['run.name']}")
    return made


def paths_named(words: list[str]) -> list[str]:
    """The words of a command that name a path in this folder (or a placeholder)."""
    values = [w.split("=", 1)[1] if "=" in w and not w.startswith("-") else w for w in words]
    return [v for v in values if "/" in v and not v.startswith("-") and "://" not in v]


def covered(path: str, made: set[str]) -> bool:
    path = path.rstrip("/")
    prefix = path.split("*")[0].rstrip("/")  # a glob: its fixed part must exist
    return any(p == m or p.startswith(m + "/") or m.startswith(p + "/")
               for p in (path, prefix) for m in made)


def in_clone(path: str) -> bool:
    """In a fresh clone: in the repository, not made here by a run."""
    return path.split("/")[0] not in MADE_HERE and (ROOT / path.split("*")[0]).exists()


def check(text: str) -> list[str]:
    """Everything in `text`'s bash blocks that would not run as copied, one line each."""
    problems, made, targets = [], set(), make_targets()
    for words in commands(text):
        line = shlex.join(words)
        program = words[0]
        if program in VENV_PROGRAMS:
            problems.append(f"{line}: call {program} as .venv/bin/{program}")
        if program == "make" and words[1] not in targets:
            problems.append(f"{line}: no make target {words[1]!r}")
        if any(w.startswith("[") or w.endswith("]") and "=[" not in w for w in words):
            problems.append(f"{line}: [optional] arguments do not run as copied: name them "
                            "in a comment")
        for path in paths_named(words):
            if any(c in path for c in "<>[]{}"):
                problems.append(f"{line}: {path} is a placeholder, not a path")
            elif path.startswith("/path/to/") or path.startswith(".venv/bin/"):
                continue
            elif path.split("/")[0] not in FOLDERS:
                problems.append(f"{line}: {path} is outside this folder's layout")
            elif not (in_clone(path) or covered(path, made)):
                problems.append(f"{line}: nothing before it makes {path}")
        made |= made_by(words)
    return problems


def test_every_readme_command_runs_as_copied():
    problems = check((ROOT / "README.md").read_text())
    assert not problems, "\n".join(problems)
    scripts = {w for words in commands((ROOT / "README.md").read_text()) for w in words
               if w.endswith(".py")}
    assert scripts and all((ROOT / s).is_file() for s in scripts), scripts


@pytest.mark.parametrize("line, problem", [
    ("python train/run.py configs/quickstart.yaml", "call python as .venv/bin/python"),
    ("torchrun --standalone train/run.py configs/resnet20.yaml", "as .venv/bin/torchrun"),
    ("tensorboard --logdir runs", "as .venv/bin/tensorboard"),
    (".venv/bin/python tools/table.py runs/fig6/plain20", "nothing before it makes runs/fig6"),
    (".venv/bin/python train/run.py --resume runs/resnet32-<time>", "is a placeholder"),
    (".venv/bin/python tools/table.py configs/resnet20.yaml [--format csv]",
     "[optional] arguments"),
    ("make quickstrat", "no make target 'quickstrat'"),
])
def test_the_check_catches_what_does_not_run_as_copied(line, problem):
    assert any(problem in p for p in check(f"```bash\n{line}\n```\n")), check(
        f"```bash\n{line}\n```\n")


def test_a_path_made_by_an_earlier_command_is_fine():
    text = ("```bash\nmake quickstart\n.venv/bin/python tools/feature_grid.py runs/quickstart\n"
            ".venv/bin/python train/run.py configs/resnet32.yaml run.name=r32\n"
            ".venv/bin/python train/run.py --resume runs/r32\n```\n")
    assert check(text) == []
    assert check(text.replace("runs/r32\n", "runs/r33\n")) != []
