"""The built wheel is self-contained: it ships the zoo and ``advshield/__main__.py``, and installed in a fresh venv
outside the checkout (dependencies borrowed from this venv, not copied) ``python -m advshield``, ``advshield zoo
list``, ``advshield demo`` and every registered defense work offline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import fmnist_available

import advshield
from advshield.cli.eval import default_defenses
from advshield.registry import DEFENSES

REPO = Path(__file__).resolve().parent.parent
PKG_ZOO = REPO / "src" / "advshield" / "zoo"
TIMEOUT = 600


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, (f"{' '.join(map(str, cmd))} exited {p.returncode}:\n"
                               f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the checkout's pyproject.toml, README.md and src/ (a copy, so no
    stale build/ folder can leak into it and the checkout gets no build/ or egg-info writes)."""
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".train"))
    out = tmp_path_factory.mktemp("wheel-out")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(src)], cwd=src)
    wheels = sorted(out.glob("advshield-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = sorted(PKG_ZOO.glob("*.safetensors"))
        assert len(shipped) >= 6
        for weights in shipped:
            for f in (weights, weights.with_suffix(".json")):
                arc = f"advshield/zoo/{f.name}"
                assert arc in names, f"{arc} missing from the wheel"
                assert z.read(arc) == f.read_bytes(), f"{arc} differs from the checkout's"
        assert "advshield/__main__.py" in names and "advshield/cli/main.py" in names
        assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "docs", "zoo")
                    or "conftest" in n or "/.train/" in n]
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "advshield = advshield.cli.main:main" in z.read(entry_points).decode()


class Fresh(NamedTuple):
    venv: Path  # the fresh venv
    env: dict[str, str]  # environment for its commands (no PYTHONPATH, no $ADVSHIELD_ZOO)
    cwd: Path  # an empty working directory outside the checkout

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """``VENV/bin/ARGS[0] ARGS[1:]`` in ``cwd``; must succeed."""
        return _run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.cwd, env=self.env)


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Fresh:
    """A venv outside the checkout with the wheel installed; torch & co. come from this venv's site-packages via
    a .pth line (.pth files inside that directory are not processed, so the editable install stays invisible)."""
    root = tmp_path_factory.mktemp("fresh")
    assert REPO not in root.parents
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
                .stdout.strip())
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "borrowed-deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ADVSHIELD_ZOO", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "2")  # `make test` sets 1: its workers share the cores
    env["PYTHONNOUSERSITE"] = "1"
    # pip runs from the borrowed site-packages; --ignore-installed: never touch this venv's editable advshield
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
         cwd=root, env=env)
    cwd = root / "cwd"
    cwd.mkdir()
    return Fresh(venv, env, cwd)


def test_fresh_venv_imports_the_wheel_not_the_checkout(fresh):
    out = fresh.run("python", "-c", "import advshield, torch; print(advshield.__file__)").stdout.strip()
    assert Path(out).resolve().is_relative_to(fresh.venv.resolve()), out


def test_python_m_advshield_version(fresh):
    p = fresh.run("python", "-m", "advshield", "--version")
    assert p.stdout.strip() == f"advshield {advshield.__version__}"


def test_python_m_advshield_passes_the_exit_code_on(fresh):
    p = subprocess.run([str(fresh.venv / "bin" / "python"), "-m", "advshield", "demo", "--models", "no-such-model",
                        "--out", str(fresh.cwd / "never")], check=False, cwd=fresh.cwd, env=fresh.env,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "unknown zoo model 'no-such-model'" in p.stderr


def test_zoo_list_comes_from_the_installed_package(fresh):
    cards = json.loads(fresh.run("advshield", "zoo", "list", "--json").stdout)
    assert {c["name"] for c in cards} == {p.stem for p in PKG_ZOO.glob("*.safetensors")}
    for c in cards:
        assert Path(c["path"]).resolve().is_relative_to(fresh.venv.resolve()), c["path"]
    text = fresh.run("advshield", "zoo", "list").stdout
    assert "fmnist-vgg" in text and "nrp-fmnist" in text


def test_every_registered_defense_builds_from_the_installed_zoo(fresh):
    code = ("import sys, torch, advshield\n"
            "from advshield.registry import DEFENSES\n"
            "model = advshield.load_model('zoo:fmnist-lenet')\n"
            "x = torch.rand(2, 1, 28, 28)\n"
            "for name in DEFENSES.names():\n"
            "    with torch.no_grad():\n"
            "        assert advshield.defend(model, name)(x).shape == (2, 10), name\n"
            "print(','.join(DEFENSES.names()))\n")
    out = fresh.run("python", "-c", code).stdout
    assert out.strip().split(",") == DEFENSES.names()  # the same defenses as the checkout registers


@pytest.mark.skipif(not fmnist_available(), reason="Fashion-MNIST not installed (run `make data`)")
def test_demo_runs_from_the_installed_wheel(fresh):
    out = fresh.cwd / "demo-out"
    # two attacks keep it short on a busy CPU; every default defense and the three zoo classifiers still run
    proc = fresh.run("advshield", "demo", "--n", "20", "--attacks", "fgsm,pgd", "--adaptive", "none", "--out", str(out),
              "--threads", "2")
    report = (out / "report.md").read_text()
    assert "## Clean accuracy" in report
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["n"] == 20
    for name in default_defenses():
        assert f"| {name} |" in report, f"defense {name} missing from the demo report"
    for name in set(DEFENSES.names()) - set(default_defenses()):  # the slow ones are named as left out
        assert f"| {name} |" not in report and f"defense {name} left out" in proc.stderr
