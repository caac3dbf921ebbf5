"""What `pip install .` (not editable) puts in place: the packages and the shipped templates,
which notifications/render.py looks for beside the packages."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_template_beside_the_packages(tmp_path: Path) -> None:
    source = tmp_path / "source"    # built from a copy: a build/ folder left in the project could ship stale files
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.db*"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {path.relative_to(ROOT).as_posix() for path in (ROOT / "templates").rglob("*") if path.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert {"notifications/render.py", "migrations/script.py.mako", "intake/cli.py"} <= names
