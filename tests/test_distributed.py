"""torchrun with 2 CPU processes (gloo): sharded evaluation gives the same per-sample flags as one process."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found beside this Python")


def launch(args: list[str], nproc: int, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """``advshield ARGS`` in one plain process (nproc 1) or under torchrun with ``nproc`` CPU processes."""
    cmd = [sys.executable, "-m", "advshield", *args] if nproc == 1 else [
        TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "advshield", *args]
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture
def env(tiny_zoo):
    e = dict(os.environ, OMP_NUM_THREADS="1", ADVSHIELD_ZOO=os.environ["ADVSHIELD_ZOO"])
    e.pop("WORLD_SIZE", None)
    return e


def test_eval_flags_identical_on_one_and_two_processes(env, tmp_path, fake_fmnist):
    common = ["eval", "--models", "zoo:tiny-lenet,zoo:tiny-vgg", "--attacks", "fgsm,pgd",
              "--defenses", "none,tvm,resize-pad,median", "--n-images", "12", "--batch-size", "4", "--eot", "2",
              "--draws", "2", "--data-root", str(fake_fmnist), "--threads", "1", "--examples", "2"]
    launch([*common, "--out", str(tmp_path / "one")], 1, env, tmp_path)
    two = launch([*common, "--out", str(tmp_path / "two")], 2, env, tmp_path)
    a, b = (load_file(str(tmp_path / d / "flags.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and len(a["labels"]) == 12
    assert any(k.startswith("adv/pgd/adaptive-") for k in a)  # adaptive cells through randomized defenses too
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea, eb = (load_file(str(tmp_path / d / "examples.safetensors")) for d in ("one", "two"))
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    assert two.stdout.count("report:") == 1  # rank 0 alone prints and writes
