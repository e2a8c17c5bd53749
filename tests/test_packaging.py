"""Packaging: a wheel built from the checkout, installed into a fresh virtual environment outside it, runs the
shipped smoke suite; committed results hold no absolute paths of the machine they ran on.

The fresh environment gets the wheel only (`--no-deps`); its dependencies are the ones already installed for
this interpreter, made visible through a `.pth` file, so the test needs neither network nor a big install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest
from committed import committed_files

PROJECT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "benchmark", "suites")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|tmp|Users|root|mnt|scratch|private)/")


def run(command: list, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def can_build_offline() -> bool:
    try:
        major = int(metadata.version("setuptools").split(".")[0])
    except metadata.PackageNotFoundError:
        return False
    return major >= 77  # pyproject.toml's build requirement


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout's sources (so no build/ or egg-info lands in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (PROJECT / name).is_dir():
            shutil.copytree(PROJECT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(PROJECT / name, source / name)
    # Offline with this interpreter's setuptools when it is new enough; else pip's isolated build (network).
    isolation = ["--no-build-isolation"] if can_build_offline() else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", root / "dist", source], root,
        timeout=300)
    (built,) = (root / "dist").glob("medmnist_benchmark-*.whl")
    return built


def test_wheel_ships_the_suites_folder_as_package_data(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"benchmark/shipped_suites/{p.name}" for p in (PROJECT / "suites").glob("*.yaml")}
    assert shipped and shipped <= names
    assert {"benchmark/bundled/breastmnist.npz", "benchmark/bundled/models/vit-tiny/config.json",
            "benchmark/published.csv", "benchmark/medmnist_plus.csv"} <= names  # the rankings read the latter
    site = PROJECT / "benchmark" / "report" / "site_files"  # the results site's templates and assets
    assert {p.relative_to(PROJECT).as_posix() for p in site.rglob("*") if p.is_file()} <= names


@pytest.mark.slow
def test_installed_wheel_runs_the_smoke_suite_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
                   .stdout.strip())
    # The dependencies: this interpreter's site-packages, after the fresh one (the wheel's benchmark wins).
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "zz_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    # Without PYTHONPATH: a checkout on it (its egg-info) would make pip skip the wheel as "already installed".
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], tmp_path, env,
        timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([python, "-c", "import benchmark; print(benchmark.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where  # the installed copy, not the checkout
    run([python, "-m", "benchmark", "run", "--suite", "smoke", "--limit", "40", "--epochs", "1",
         "--datasets", "breastmnist", "--models", "resnet18_28", "--quiet"], work, env)
    (record_file,) = (work / "results" / "runs" / "smoke").glob("breastmnist-28-resnet18_28-s0-*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "completed" and record["dataset"]["n_train"] == 40
    assert record["dataset"]["source"] == "bundled/breastmnist.npz"
    assert not MACHINE_PATH.search(record_file.read_text()), "the record holds an absolute path of this machine"


def test_committed_results_hold_no_machine_paths():
    """Records, perf results and tables are shared: no absolute paths of the machine they were made on."""
    files = [p for p in committed_files("results/**/*") if p.suffix in (".json", ".md", ".csv", ".tex")]
    assert files
    offenders = [str(p.relative_to(PROJECT)) for p in files if MACHINE_PATH.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
