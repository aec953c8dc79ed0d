"""DiffPure and its DDPM denoiser: shapes, schedule, seeded randomness, exact gradients through the reverse
process (finite differences; checkpointing changes nothing), and training that resumes to the same state."""
import pytest
import torch
from conftest import needs_fmnist
from safetensors.torch import load_file

from advshield.defenses.diffusion import DiffPure, Schedule, UNet, load_diffpure
from advshield.errors import AdvshieldError
from advshield.train.diffusion import DiffusionConfig, train_diffusion


def tiny(channels: int = 1, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(in_channels=channels, base=8, mults=(1, 2), attention=True)
    with torch.no_grad():  # a non-trivial output layer (it starts at zero)
        net.conv_out.weight.normal_(0, 0.05)
    return net.eval()


def test_unet_shapes_and_schedules():
    for c, side in ((1, 28), (3, 32)):
        net = tiny(c)
        x = torch.randn(2, c, side, side)
        assert net(x, torch.tensor([0, 999])).shape == x.shape
    for kind in ("linear", "cosine"):
        s = Schedule(kind, 1000)
        ab = s.alpha_bar
        assert len(ab) == 1000 and bool((ab[1:] < ab[:-1]).all()) and 0 < float(ab[-1]) < float(ab[0]) < 1
    with pytest.raises(ValueError):
        Schedule("sigmoid")


def test_diffpure_contract_seeded_and_randomized():
    sched = Schedule("linear", 100)
    x = torch.rand(3, 1, 28, 28)
    for sampler in ("ddim", "ddpm"):
        a, b = (DiffPure(tiny(), sched, t_star=20, steps=4, sampler=sampler, seed=5) for _ in range(2))
        out = a(x)
        assert out.shape == x.shape and 0 <= float(out.min()) <= float(out.max()) <= 1
        assert torch.equal(out, b(x))  # same seed, same sequence
        assert not torch.equal(a(x), out)  # randomized: the next call draws new noise
        a.restart_noise(7)
        b.restart_noise(7)
        assert torch.equal(a(x), b(x))
    assert DiffPure(tiny(), sched, t_star=20, steps=4).timesteps() == [20, 15, 10, 5]
    for bad in ({"t_star": 0}, {"t_star": 100}, {"steps": 30}, {"sampler": "euler"}):
        with pytest.raises(ValueError):
            DiffPure(tiny(), sched, **{"t_star": 20, "steps": 4, **bad})


def test_gradient_through_the_reverse_process_matches_finite_differences():
    sched = Schedule("linear", 100)
    net = tiny().double()
    pure = DiffPure(net, sched, t_star=5, steps=2, sampler="ddpm", seed=1)
    x = (0.3 + 0.4 * torch.rand(1, 1, 28, 28, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(1, 1, 28, 28, dtype=torch.float64)
    pure.restart_noise(0)
    (g,) = torch.autograd.grad((pure(x) * w).sum(), x)
    plain = DiffPure(net, sched, t_star=5, steps=2, sampler="ddpm", seed=1, checkpoint_steps=False)
    plain.restart_noise(0)
    (g2,) = torch.autograd.grad((plain(x) * w).sum(), x)
    torch.testing.assert_close(g, g2)  # checkpointing recomputes the same graph
    h = 1e-6
    for idx in [(0, 0, 14, 14), (0, 0, 3, 20), (0, 0, 25, 7)]:
        vals = []
        for sign in (1, -1):
            xp = x.detach().clone()
            xp[idx] += sign * h
            pure.restart_noise(0)
            with torch.no_grad():
                vals.append(float((pure(xp) * w).sum()))
        assert (vals[0] - vals[1]) / (2 * h) == pytest.approx(float(g[idx]), rel=1e-4, abs=1e-8)


def test_training_resumes_to_the_same_state_and_loads_as_diffpure(tmp_path, fake_fmnist):
    def cfg(steps: int) -> DiffusionConfig:
        return DiffusionConfig(name="d", base=8, mults=[1, 2], steps=steps, batch_size=8, save_every=1, log_every=1,
                               eval_images=4, timesteps=50, data_root=str(fake_fmnist), device="cpu")

    quiet = lambda _: None  # noqa: E731
    train_diffusion(cfg(4), tmp_path / "straight", log=quiet)
    train_diffusion(cfg(2), tmp_path / "split", log=quiet)
    (tmp_path / "split" / "d.safetensors").unlink()
    card = train_diffusion(cfg(4), tmp_path / "split", log=quiet)
    a, b = (load_file(str(tmp_path / d / "d.safetensors")) for d in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert card["kind"] == "diffusion" and "psnr_t25" in card["metrics"] and card["training"]["steps"] == 4
    pure = load_diffpure(str(tmp_path / "split" / "d.safetensors"), t_star=10, steps=2, seed=0)
    x = torch.rand(2, 1, 28, 28)
    assert pure(x).shape == x.shape and pure.schedule.steps == 50
    with pytest.raises(AdvshieldError):
        train_diffusion(DiffusionConfig(name="d", mults=[1, 2, 2, 2], steps=1, data_root=str(fake_fmnist),
                                        device="cpu"), tmp_path / "bad", log=quiet)


def _saved_bytes(pure: DiffPure, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of pure(x)."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pure(x.clone().requires_grad_(True)).sum()
    return total[0]


def test_checkpointing_keeps_backward_memory_flat_in_the_steps():
    sched = Schedule("linear", 100)
    x = torch.rand(2, 1, 28, 28)
    image = x.numel() * x.element_size()
    kept = {k: _saved_bytes(DiffPure(tiny(), sched, t_star=40, steps=k, seed=0), x) for k in (2, 8)}
    plain = _saved_bytes(DiffPure(tiny(), sched, t_star=40, steps=8, seed=0, checkpoint_steps=False), x)
    assert kept[8] - kept[2] <= 6 * 4 * image  # a few image-sized inputs per extra step, no activations
    assert kept[8] < plain / 10


@needs_fmnist
def test_shipped_ddpm_loads_offline_and_reproduces_its_card():
    """zoo:ddpm-fmnist (the EMA weights of `advshield train diffusion`, command in its card) loads without network
    and gives back the DiffPure PSNR per t* its card states (seeded DDIM on the first test images)."""
    from advshield.data import load_dataset
    from advshield.data.tensors import to_float
    from advshield.train.diffusion import purification_psnr

    pure = load_diffpure("zoo:ddpm-fmnist", seed=0)
    card = pure.card
    assert card["kind"] == "diffusion" and card["command"].startswith("advshield train diffusion")
    n = card["training"]["eval_images"]
    images = to_float(load_dataset("fashion-mnist", "test").images[:n])
    ts = tuple(int(k[6:]) for k in card["metrics"] if k.startswith("psnr_t"))
    got = purification_psnr(pure.denoiser, pure.schedule, images, ts, seed=card["training"]["seed"])
    for k, v in got.items():
        assert v == pytest.approx(card["metrics"][k], abs=0.02), k
