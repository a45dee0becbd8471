"""The wheel holds every sub-package and works on its own: built here, installed into a fresh venv, imported.

The fresh venv sees the project venv's third-party packages through PYTHONPATH (no network), but not its
editable install (a .pth hook that PYTHONPATH does not run), so every import below comes from the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["seqcompress", "seqcompress.kernels", "seqcompress.positions", "seqcompress.domains", "seqcompress.cli"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    tree = tmp_path_factory.mktemp("tree")  # a copy, so no build/ folder is left (or reused) in the checkout
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(tree)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("seqcompress-*.whl")
    return path


def test_the_wheel_contains_every_sub_package_and_the_bundled_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    folders = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    source_packages = {str(p.parent.relative_to(ROOT / "src")).replace("/", ".")
                       for p in (ROOT / "src").rglob("__init__.py")}
    assert folders == source_packages and set(PACKAGES) <= folders
    for sample in ("vocab.txt", "wiki_sample.txt", "yeast_sample.fa.gz", "co2_sample.csv", "speech_sample.flac"):
        assert f"seqcompress/data/{sample}" in names


def test_the_wheel_imports_and_runs_in_a_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:  # installing a pure wheel is unpacking it into site-packages
        zf.extractall(target)
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    code = ("import seqcompress, seqcompress.cli.main, seqcompress.domains.dna, seqcompress.kernels.local;"
            "from seqcompress.domains import REGISTRY, domain_class;"
            "[domain_class(n) for n in REGISTRY];"
            "print(seqcompress.__file__)")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": f"{target}:{deps}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(target))
