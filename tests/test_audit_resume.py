"""A stopped audit resumes: finished blocks are stored keyed by inputs, weights and settings, read back on a re-run
(the result is the same as an uninterrupted run), and never reused for other inputs or settings."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY

import advshield
import advshield.eval.audit as audit_mod
from advshield.defenses.base import Defense
from advshield.eval.blockcache import BlockCache, fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


class Noise(Defense):
    name = "noise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def setup():
    torch.manual_seed(0)
    cls, _, args = TINY["tiny-lenet"]
    model = cls(**args).eval()
    x = torch.rand(10, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def run(model, x, y, tmp, **kw):
    return advshield.audit(model, Noise(), x, y, 0.1, version="quick", steps=2, n_queries=4, eot=2, draws=2,
                           batch_size=5, resume_dir=tmp, **kw)


def test_a_stopped_audit_resumes_to_the_same_result(tmp_path, monkeypatch):
    model, x, y = setup()
    whole = run(model, x, y, None)
    first = run(model, x, y, tmp_path / "r")
    assert torch.equal(first.robust, whole.robust) and first.per_attack == whole.per_attack
    (key,) = [p for p in (tmp_path / "r").iterdir()]
    assert sorted(p.name for p in key.iterdir()) == ["block-0.safetensors", "block-5.safetensors", "sanity.json"]
    (key / "block-5.safetensors").unlink()  # "stopped" before the second block was stored
    calls = []
    real = audit_mod._block
    monkeypatch.setattr(audit_mod, "_block", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    again = run(model, x, y, tmp_path / "r")
    assert calls == [5]  # only the missing block ran
    assert torch.equal(again.robust, whole.robust) and again.per_attack == whole.per_attack
    assert again.flags == whole.flags
    calls.clear()
    run(model, x, y, tmp_path / "r", seed=1)  # other settings: a new key, nothing reused
    assert calls == [0, 5] and len(list((tmp_path / "r").iterdir())) == 2


def test_fingerprint_and_cache_basics(tmp_path):
    model, x, _ = setup()
    assert fingerprint(model, x, {"a": 1}) == fingerprint(model, x.clone(), {"a": 1})
    assert fingerprint(model, x, {"a": 1}) != fingerprint(model, x, {"a": 2})
    assert fingerprint(model, x) != fingerprint(model, x + 1e-6)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert fingerprint(model, x) != fingerprint(setup()[0], x)  # other weights
    off = BlockCache(None, "k")
    off.put("b", {"t": torch.ones(2)})
    assert off.get("b") is None and off.get_json("s") is None
    on = BlockCache(tmp_path, "k")
    on.put("b", {"t": torch.ones(2, dtype=torch.bool), "e": torch.empty(0, 1, 2, 2)})
    got = on.get("b")
    assert got["t"].dtype == torch.bool and got["e"].shape == (0, 1, 2, 2)
    assert not list(tmp_path.glob("k/*.tmp"))


def test_fingerprint_takes_batch_norm_buffers_and_scalars():
    """Batch norm keeps a 0-dim long ``num_batches_tracked``: the fingerprint must read it, and see it change."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    before = fingerprint(net, torch.tensor(3), torch.tensor(0.5))
    net.train()(torch.rand(4, 1, 5, 5))  # one step updates the running stats and the counter
    assert fingerprint(net, torch.tensor(3), torch.tensor(0.5)) != before
    assert fingerprint(torch.tensor(3)) != fingerprint(torch.tensor(4))
