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


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=k)


def _same_log(a: Path, b: Path) -> None:
    la, lb = (p.read_text().splitlines() for p in (a, b))
    assert la[0] == lb[0] and len(la) == len(lb) > 1
    for ra, rb in zip(la[1:], lb[1:]):
        va, vb = (list(map(float, r.split(",")[1:-1])) for r in (ra, rb))
        assert va == pytest.approx(vb, rel=1e-4, abs=1e-6)


def test_purifier_training_on_two_processes_equals_one_and_resumes_in_one(env, tmp_path, fake_fmnist):
    """The same global batch on 1 process and on 2 (gloo) gives the same weights and logs (critic batch norm,
    RaGAN means, SSP random starts, Gaussian noise, strength mix and clean share are global). Then both runs are
    extended by a step in ONE process: the 2-process checkpoint resumes there exactly as the 1-process one."""
    extra = {"adversary": "ssp+gaussian", "eps_min": "4", "clean_fraction": "0.25"}
    launch(_purifier_args(fake_fmnist, tmp_path / "one", 3, **extra), 1, env, tmp_path)
    two = launch(_purifier_args(fake_fmnist, tmp_path / "two", 3, **extra), 2, env, tmp_path)
    _close(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    _same_log(*(tmp_path / d / ".train" / "p" / "log.csv" for d in ("one", "two")))
    assert two.stdout.count("wrote") == 1  # rank 0 alone prints and writes
    for d in ("one", "two"):
        res = launch([*_purifier_args(fake_fmnist, tmp_path / d, 4, **extra), "--overwrite"], 1, env, tmp_path)
        assert "resuming p at step 3/4" in res.stdout + res.stderr
    _close(_weights(tmp_path / "one"), _weights(tmp_path / "two"))


@pytest.mark.parametrize("defense", ["resize-pad", "median"], ids=["randomized", "deterministic"])
def test_audit_flags_identical_on_one_and_two_processes(env, tmp_path, fake_fmnist, defense):
    """Sharded audit: blocks of samples run on rank b % N with their randomness restarted from (seed, block
    start), the sanity checks on rank i % N with theirs restarted from (seed, check), so per-sample flags,
    accuracies, sanity results and examples match one process."""
    import json

    common = ["audit", "--model", "zoo:tiny-lenet", "--defense", defense, "--n-images", "12", "--batch-size", "4",
              "--version", "quick", "--steps", "3", "--n-queries", "8", "--eot", "2", "--draws", "2",
              "--data-root", str(fake_fmnist), "--threads", "1", "--device", "cpu"]
    launch([*common, "--out", str(tmp_path / "one")], 1, env, tmp_path)
    two = launch([*common, "--out", str(tmp_path / "two")], 2, env, tmp_path)
    a, b = (load_file(str(tmp_path / d / "flags.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and len(a["robust"]) == 12
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ja, jb = (json.loads((tmp_path / d / "audit.json").read_text()) for d in ("one", "two"))
    assert ja["per_attack"] == jb["per_attack"] and ja["flags"] == jb["flags"]
    for k in ("eps_curve", "unbounded_accuracy"):  # the sanity checks, shared out over the ranks
        assert ja["meta"][k] == jb["meta"][k], k
    assert ja["meta"]["randomized"] is (defense == "resize-pad")
    ea, eb = (load_file(str(tmp_path / d / "examples.safetensors")) for d in ("one", "two"))
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    assert two.stdout.count("wrote") == 1


@pytest.mark.parametrize("adv", [[], ["--adversarial", "pgd", "--adv-steps", "2"]], ids=["clean", "pgd-at"])
def test_classifier_training_on_two_processes_equals_one(env, tmp_path, fake_fmnist, adv):
    """A BN network, an odd batch size (uneven shards: 150 + 149 rows, and 1 + 1 for an epoch's last batch): 2 gloo
    processes give the weights of 1 process (global batch-norm statistics, global-mean loss); the 2-process
    checkpoint loads in 1 process. (Long runs drift apart by float rounding, as any two reduction orders do.)"""
    def args(out: str, epochs: int) -> list[str]:
        return ["train", "classifier", "--name", "c", "--arch", "resnet", "--arch-args",
                '{"widths": [4, 8], "blocks": 1}', "--data-root", str(fake_fmnist), "--epochs", str(epochs),
                "--batch-size", "299", "--lr", "0.05", "--device", "cpu", "--threads", "1", "--out-dir",
                str(tmp_path / out), *adv]

    launch(args("one", 2), 1, env, tmp_path)
    two = launch(args("two", 2), 2, env, tmp_path)
    a, b = (load_file(str(tmp_path / d / "c.safetensors")) for d in ("one", "two"))
    _close(a, b)
    assert two.stdout.count("wrote") == 1
    (tmp_path / "two" / "c.safetensors").unlink()  # the 2-process checkpoint (epoch 2/2) loads in 1 process
    res = launch(args("two", 2), 1, env, tmp_path)
    assert "resuming c at epoch 2/2" in res.stdout + res.stderr
    _close(a, load_file(str(tmp_path / "two" / "c.safetensors")))


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_autoencoder_training_on_two_processes_equals_one(env, tmp_path, fake_fmnist, kind):
    """Clean head / adversarial tail cut across the ranks (3 clean rows of 8), PGD random starts and latent noise
    drawn for the whole batch: 2 processes log the losses of 1 and reach its weights. The biases of convolutions
    followed by batch norm have a zero gradient up to float rounding, which Adam rescales to steps of up to lr
    (1e-3) each, hence the weight tolerance of 3 steps × lr."""
    def args(out: str) -> list[str]:
        return ["train", "autoencoder", "--name", "a", "--kind", kind, "--arch", f"{kind}-mnist", "--model",
                "zoo:tiny-lenet", "--data-root", str(fake_fmnist), "--steps", "3", "--batch-size", "8",
                "--clean-fraction", "0.375", "--attacks", "pgd", "--pgd-steps", "2", "--eval-images", "8",
                "--save-every", "1", "--log-every", "1", "--device", "cpu", "--threads", "1", "--out-dir",
                str(tmp_path / out)]

    launch(args("one"), 1, env, tmp_path)
    launch(args("two"), 2, env, tmp_path)
    _same_log(*(tmp_path / d / ".train" / "a" / "log.csv" for d in ("one", "two")))
    _close(*(load_file(str(tmp_path / d / "a.safetensors")) for d in ("one", "two")), atol=3.5e-3)


def test_fru_training_on_two_processes_equals_one(env, tmp_path, fake_fmnist):
    """Pool members are fitted on rank i % N and gathered; each step's batch and perturbations are drawn whole and
    sliced: 2 processes log the losses of 1 and reach its FRU weights (to 1e-3: Adam rescales the float-level gradient
    of the conv biases before batch norm, see the autoencoder test; a batch norm the optimiser lost would be 3e-3
    off)."""
    def args(out: str) -> list[str]:
        return ["train", "fru", "--model", "zoo:tiny-vgg", "--data-root", str(fake_fmnist), "--pool-size", "3",
                "--pool-images", "30", "--steps", "3", "--batch-size", "8", "--eval-images", "20",
                "--save-every", "1", "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path / out)]

    launch(args("one"), 1, env, tmp_path)
    launch(args("two"), 2, env, tmp_path)
    pools = [load_file(str(tmp_path / d / ".train" / "tiny-vgg-fru" / "pool.safetensors"))["pool"]
             for d in ("one", "two")]
    assert torch.equal(*pools)
    _same_log(*(tmp_path / d / ".train" / "tiny-vgg-fru" / "log.csv" for d in ("one", "two")))
    _close(*(load_file(str(tmp_path / d / "tiny-vgg-fru.safetensors")) for d in ("one", "two")), atol=1e-3)


def test_eval_on_an_image_folder_streamed_by_two_processes(env, tmp_path, gray_tree):
    """An image folder read batch by batch (each rank reads its own batches, with a DataLoader worker) gives the
    flags of one process reading it all."""
    common = ["eval", "--models", "zoo:tiny-lenet", "--attacks", "fgsm", "--defenses", "none,median",
              "--data", str(gray_tree), "--batch-size", "4", "--threads", "1", "--workers", "1",
              "--adaptive", "none"]
    launch([*common, "--out", str(tmp_path / "one")], 1, env, tmp_path)
    launch([*common, "--out", str(tmp_path / "two")], 2, env, tmp_path)
    a, b = (load_file(str(tmp_path / d / "flags.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and len(a["labels"]) == 10
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_global_batchnorm_keeps_the_parameters_an_optimiser_holds():
    from advshield.distributed import GlobalBatchNorm, global_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Sequential(
        torch.nn.BatchNorm2d(2)))
    before = [id(p) for p in [*net.parameters(), *net.buffers()]]
    x = torch.rand(4, 1, 6, 6)
    want = net.train()(x)
    global_batchnorm(net)
    assert isinstance(net[1], GlobalBatchNorm) and isinstance(net[2][0], GlobalBatchNorm)
    assert [id(p) for p in [*net.parameters(), *net.buffers()]] == before
    torch.testing.assert_close(net(x), want)  # one process: plain batch norm
