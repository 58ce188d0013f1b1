"""The layout's contracts (../ARCHITECTURE.md of the project): import directions, light imports, short files.

The import contracts themselves live in pyproject.toml ([tool.importlinter]); import-linter checks
them with external packages included, so "models import no matplotlib" is a contract too.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "cxrfm"
MAX_LINES = 600


def test_import_contracts_hold():
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint_imports).exists():
        pytest.fail("import-linter is not installed (it is part of the dev extra)")
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module",
    [
        "cxrfm.models",
        "cxrfm.models.report",
        "cxrfm.models.classify",
        "cxrfm.pipelines",
        "cxrfm.pipelines.report_generation",
        "cxrfm.pipelines.classification",
        "cxrfm.pipelines.lung_masks",
        "cxrfm.data",
    ],
)
def test_importing_models_and_pipelines_loads_no_matplotlib(module):
    # A fresh interpreter: this test process has long imported matplotlib through other tests.
    code = f"import sys, {module}; print('matplotlib' in sys.modules or any(m.startswith('matplotlib.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"import {module} loaded matplotlib"


def test_no_source_file_is_longer_than_the_limit():
    lengths = {path.relative_to(ROOT): len(path.read_text(encoding="utf-8").splitlines()) for path in SOURCE.rglob("*.py")}
    too_long = {str(path): count for path, count in lengths.items() if count > MAX_LINES}
    assert not too_long, f"split these along their concerns (limit {MAX_LINES} lines): {too_long}"


def test_tests_mirror_the_source_tree():
    # Every test folder names a package of src/cxrfm (tests/<wing>/...), so a test is found where
    # its code is.
    packages = {path.name for path in SOURCE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    folders = {path.name for path in (ROOT / "tests").iterdir() if path.is_dir() and not path.name.startswith((".", "__"))}
    assert folders <= packages, f"test folders without a source package: {sorted(folders - packages)}"
