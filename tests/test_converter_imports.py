"""The layering of the data path, tools/converter -> records -> pipelines -> train: the offline
converter needs only records/, records/ needs nothing above it, and records/check.py and
records/format.py do not import each other both ways."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONVERTER = sorted((ROOT / "tools/converter").rglob("*.py")) + [ROOT / "tools/convert.py"]
ABOVE_RECORDS = ("pipelines", "train", "models")


def imported(path: Path) -> set[str]:
    """Absolute module names a file imports, anywhere in it (lazy imports in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def offending(paths, banned: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(n for n in imported(path) if n.split(".")[0] in banned
                     or (n.startswith("tools.") and not n.startswith("tools.converter")))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_the_converter_imports_only_records():
    assert len(CONVERTER) > 10
    assert offending(CONVERTER, ABOVE_RECORDS) == {}


def test_importing_every_converter_module_loads_no_pipeline_or_trainer():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in CONVERTER]
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ABOVE_RECORDS!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_records_import_nothing_above_them_and_no_circle():
    records = sorted((ROOT / "records").glob("*.py"))
    assert offending(records, ABOVE_RECORDS + ("tools",)) == {}
    assert "records.check" not in imported(ROOT / "records/format.py")
    assert "records.check" not in imported(ROOT / "records/datasets.py")
