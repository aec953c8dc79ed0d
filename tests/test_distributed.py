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


def _purifier_args(root: Path, out: Path, steps: int, **extra: str) -> list[str]:
    args = ["train", "purifier", "--name", "p", "--arch", "resg-small", "--data-root", str(root),
            "--feature-model", "zoo:tiny-vgg", "--steps", str(steps), "--batch-size", "4", "--ssp-steps", "2",
            "--critic-width", "4", "--eval-images", "4", "--save-every", "1", "--log-every", "1",
            "--device", "cpu", "--threads", "1", "--out-dir", str(out)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "p.safetensors"))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("extra", [{}, {"adversary": "ssp+gaussian", "eps_min": "4", "clean_fraction": "0.25"}],
                         ids=["ssp", "mixed-adversaries"])
def test_purifier_training_on_two_processes_equals_one(env, tmp_path, fake_fmnist, extra):
    """The same global batch on 1 process and on 2 (gloo) gives the same weights (critic batch norm, RaGAN means and
    random starts are global); the logs agree."""
    launch(_purifier_args(fake_fmnist, tmp_path / "one", 3, **extra), 1, env, tmp_path)
    two = launch(_purifier_args(fake_fmnist, tmp_path / "two", 3, **extra), 2, env, tmp_path)
    _close(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    logs = [(tmp_path / d / ".train" / "p" / "log.csv").read_text().splitlines() for d in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 4
    for a, b in zip(logs[0][1:], logs[1][1:]):
        va, vb = (list(map(float, r.split(",")[1:-1])) for r in (a, b))
        assert va == pytest.approx(vb, rel=1e-4, abs=1e-6)
    assert two.stdout.count("wrote") == 1  # rank 0 alone prints and writes


def test_purifier_resumes_a_two_process_checkpoint_in_one_process(env, tmp_path, fake_fmnist):
    """2 steps on 2 processes, then steps 3–4 in one process = 4 steps straight in one process."""
    launch(_purifier_args(fake_fmnist, tmp_path / "straight", 4), 1, env, tmp_path)
    launch(_purifier_args(fake_fmnist, tmp_path / "split", 2), 2, env, tmp_path)
    (tmp_path / "split" / "p.safetensors").unlink()
    (tmp_path / "split" / "p.json").unlink()
    res = launch(_purifier_args(fake_fmnist, tmp_path / "split", 4), 1, env, tmp_path)
    assert "resuming p at step 2/4" in res.stdout + res.stderr
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    _close(a, b)
