"""Training an NRP purifier by self-supervised adversarial training (Naseer et al. 2020, Algorithm 2).

Each step: a batch of clean crops x (labels never used); adversaries x' made on the fly against a frozen
feature extractor F (SSP by default); the purifier P maps x' to x̂ = P(x'); then

- P minimises  α·L_adv + γ·L_img + λ·L_feat  (α = 5e-3, γ = 1e-2, λ = 1), with
  L_feat = mean |F(x) − F(x̂)|, L_img = mean (x̂ − x)², and the paper's relativistic-average GAN term
  L_adv = mean −log σ(C(x̂) − mean C(x)) (Eq. 7: only the fake term, not ESRGAN's symmetric two-term form);
- the critic C is updated to tell x from x̂ (detached) with the mirrored RaGAN loss
  ½·mean[−log σ(C(x) − mean C(x̂)) − log(1 − σ(C(x̂) − mean C(x)))].

Extensions, off by default (not in the paper): ``adversary`` = "mi-di" (DIM on the feature classifier's own
predictions, label-free) or a "+"-joined mix such as "ssp+mi-di" (the batch split among the kinds); ``eps_min``
rescales each sample's perturbation x' − x by a factor drawn uniformly from [eps_min/eps, 1] (a mix of strengths
up to eps from one attack run); ``clean_fraction`` leaves that share of each batch clean, so the purifier also
learns to pass clean images.

Ablations: ``no_feat`` (λ = 0), ``no_pixel`` (γ = 0), ``vanilla_gan`` (non-relativistic GAN:
−log σ(C(x̂)) for P, ½·[−log σ(C(x)) − log(1 − σ(C(x̂)))] for C), ``adversary`` = "gaussian" (GNP: noise of
std eps/2 clipped to ±eps) or "fgsm" (FGSP: FGSM on the feature model when it is a classifier, else SSP with
one step of eps from the random start).

All randomness of step k (crop choice, adversary noise) is drawn from generators seeded by (seed, k), so a
run resumed from a checkpoint continues exactly as the uninterrupted run would, whatever the DataLoader
workers. Adam with β = (0.9, 0.999) for both nets: the paper gives only the learning rate (1e-4); these are
the defaults ESRGAN, whose generator and critic NRP adopts, trains with.
"""
from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..attacks.fgsm import FGSM
from ..attacks.ssp import SSP
from ..data import DATASETS, load_dataset
from ..data.folder import LUMA, ImageFolder, header_shape, read_image
from ..data.tensors import to_float
from ..defenses.nrp import NRP_CONFIGS, build_purifier_net, count_parameters
from ..distributed import global_like, global_mean
from ..errors import AdvshieldError, DataError
from ..models import load_model
from ..models.checkpoint import save_checkpoint
from ..models.vgg16 import VGG16Features
from ..registry import ATTACKS
from ..utils import seed_everything
from . import runtime
from .classifier import augment_batch
from .loop import check_accum, run_steps, step_generator, step_seed

ADVERSARIES = ("ssp", "gaussian", "fgsm", "mi-di")
LOSS_KEYS = ("total", "feat", "img", "adv", "critic")
_DATA, _ADV, _EVAL, _MIX = 0, 1, 2, 3  # streams of per-step randomness


@dataclass
class PurifierConfig:
    """Settings of one purifier training run. eps/alphas in [0,1] units; ``crop`` in pixels."""

    name: str
    arch: str = "nrp-small"  # a name in NRP_CONFIGS
    data: str = "fashion-mnist"  # registered dataset (train split), "photos", or an image folder
    feature_model: str = "zoo:fmnist-vgg"  # zoo:NAME / .safetensors classifier, or vgg16-features[:WEIGHTS]
    layer: str | None = None  # feature layer (default: the model's default_feature_layer / conv3_3)
    steps: int = 2000
    batch_size: int = 16
    crop: int = 28
    eps: float = 16 / 255
    ssp_steps: int = 10
    ssp_alpha: float = 2 / 255
    adversary: str = "ssp"
    eps_min: float | None = None  # each sample's perturbation rescaled to a budget drawn from [eps_min, eps]
    clean_fraction: float = 0.0  # share of each batch left clean (the purifier also learns P(x) ≈ x)
    no_feat: bool = False
    no_pixel: bool = False
    vanilla_gan: bool = False
    alpha_adv: float = 5e-3
    gamma_img: float = 1e-2
    lambda_feat: float = 1.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    critic_width: int = 32
    save_every: int = 200
    log_every: int = 10
    eval_images: int = 256
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # "bf16" / "fp16" autocast on CUDA (fp16 with loss scaling); ignored elsewhere
    accum: int = 1  # gradient accumulation: each rank's share of a step's batch is split into this many parts
    workers: int = 0
    data_root: str | None = None
    threads: int | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)  # filled in from NRP_CONFIGS


# settings that may change between a run and its resume without changing the result
# (the process count and ``accum`` change only the batch-norm statistics and RaGAN means of a micro-batch; the
# learning rate is constant, so ``steps`` may grow on resume: a run is extended)
_RUNTIME_KEYS = ("device", "data_root", "threads", "workers", "save_every", "eval_images", "arch_args", "accum",
                 "steps")


def _config_key(cfg: PurifierConfig) -> str:
    keep = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}
    keep["betas"] = list(keep["betas"])
    keep["amp"] = keep["amp"] or False  # runs made before --amp took a precision keep their key
    return json.dumps(keep, sort_keys=True)


def loss_weights(cfg: PurifierConfig) -> dict[str, float]:
    """The weights of the purifier's loss terms after the ablation switches: {"adv", "img", "feat"}."""
    return {"adv": cfg.alpha_adv, "img": 0.0 if cfg.no_pixel else cfg.gamma_img,
            "feat": 0.0 if cfg.no_feat else cfg.lambda_feat}


# ---------------------------------------------------------------------------------------------------------------
# losses


def purifier_adv_loss(c_fake: torch.Tensor, c_real: torch.Tensor, relativistic: bool = True) -> torch.Tensor:
    """Purifier's GAN term. RaGAN (paper Eq. 7): mean −log σ(C(x̂) − mean C(x)); vanilla: mean −log σ(C(x̂)).
    Under torchrun ``mean C(x)`` is the global batch's (the outer mean is averaged by the gradient all-reduce)."""
    z = c_fake - global_mean(c_real) if relativistic else c_fake
    return F.softplus(-z).mean()


def critic_loss(c_real: torch.Tensor, c_fake: torch.Tensor, relativistic: bool = True) -> torch.Tensor:
    """Critic's loss for telling x (real) from x̂ (fake), mirrored from :func:`purifier_adv_loss`:
    ½·mean[−log σ(r) − log(1 − σ(f))] with r = C(x) − mean C(x̂), f = C(x̂) − mean C(x) (RaGAN) or
    r = C(x), f = C(x̂) (vanilla)."""
    if relativistic:  # global-batch means under torchrun (differentiable all-reduce)
        r, f = c_real - global_mean(c_fake), c_fake - global_mean(c_real)
    else:
        r, f = c_real, c_fake
    return 0.5 * (F.softplus(-r).mean() + F.softplus(f).mean())


class Critic(nn.Module):
    """VGG-style critic: five blocks of conv3×3 + BatchNorm + LeakyReLU(0.2) (widths w, 2w, 4w, 8w, 8w;
    stride 2 in blocks 2–4, so 28×28 → 4×4 and 128×128 → 16×16), global average pool, linear → one logit.
    N×C×H×W (any H, W) → N."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        strides = [1, 2, 2, 2, 1]
        layers: list[nn.Module] = []
        c = in_channels
        for w, s in zip(widths, strides):
            layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


# ---------------------------------------------------------------------------------------------------------------
# data: batches of clean crops that depend only on (seed, step)


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """B×C×H×W float → B×channels×H×W: gray replicated to RGB, RGB to ITU-R 601 luma."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        return (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise DataError(f"cannot feed {c}-channel images to a {channels}-channel purifier")


def _flip(x: torch.Tensor, gen: torch.Generator, n: int | None = None, keep: slice = slice(None)) -> torch.Tensor:
    """Flip each image of x horizontally with probability ½; the coins are drawn for a batch of ``n`` (default
    len(x)) of which x holds the rows ``keep``."""
    flip = (torch.rand(n or len(x), generator=gen) < 0.5)[keep]
    x[flip] = x[flip].flip(-1)
    return x


class CropSource(Dataset):
    """Clean training batches: ``source[step]`` → float B×C×crop×crop in [0,1], drawn with
    :func:`step_generator` (seed, step), so any worker produces the same batch for the same step.

    ``images``: a uint8/float N×C×H×W tensor (same-size images) or a list of C×H×W tensors (any sizes ≥ crop);
    ``files``: image paths read on demand with their (H, W) (an image folder). Same-size images equal to the
    crop get a random shift of up to 2 px (zero padding) and a horizontal flip; larger ones a random crop
    and a flip. ``keep``: the rows of each batch this process trains on (under torchrun, its shard): every random
    choice is drawn for the whole batch, but only the kept files are read."""

    def __init__(self, crop: int, batch_size: int, seed: int, channels: int,
                 images: torch.Tensor | list[torch.Tensor] | None = None,
                 files: list[tuple[Path, int, int]] | None = None, keep: slice | None = None) -> None:
        self.crop, self.batch_size, self.seed, self.channels = crop, batch_size, seed, channels
        self.images, self.files = images, files
        self.keep = keep or slice(0, batch_size)
        sizes = ([(int(h), int(w)) for _, h, w in files] if files is not None
                 else [tuple(x.shape[-2:]) for x in images] if isinstance(images, list)
                 else [tuple(images.shape[-2:])])
        small = [s for s in sizes if s[0] < crop or s[1] < crop]
        if small:
            raise DataError(f"training images of {small[0][0]}×{small[0][1]} are smaller than the {crop}×{crop} "
                            "crop; use a smaller --crop")

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, step: int) -> torch.Tensor:
        """This process's rows (``keep``) of the batch of ``step``: B_local×C×crop×crop float in [0,1]."""
        return self.sample(self.batch_size, step_generator(self.seed, step, _DATA), self.keep)

    def sample(self, n: int, gen: torch.Generator, keep: slice | None = None) -> torch.Tensor:
        """Rows ``keep`` (default all) of a batch of ``n`` random crops drawn with ``gen``."""
        c = self.crop
        keep = keep or slice(0, n)
        if isinstance(self.images, torch.Tensor):
            idx = torch.randint(len(self.images), (n,), generator=gen)
            x = to_float(self.images[idx])
            if x.shape[-2:] == (c, c):
                x = augment_batch(x, gen)
            else:
                x = _flip(self._crops([x[i] for i in range(n)], gen), gen)
            x = x[keep]
        elif self.images is not None:
            idx = torch.randint(len(self.images), (n,), generator=gen)
            x = _flip(self._crops([to_float(self.images[int(i)]) for i in idx], gen), gen)[keep]
        else:
            idx = torch.randint(len(self.files), (n,), generator=gen)
            mine = range(n)[keep]
            out = []
            for j, i in enumerate(idx):
                path, h, w = self.files[int(i)]
                t = int(torch.randint(h - c + 1, (1,), generator=gen))
                l_ = int(torch.randint(w - c + 1, (1,), generator=gen))
                if j in mine:  # the random draws of every row are made; only this process's files are read
                    out.append(read_image(path, self.channels)[:, t : t + c, l_ : l_ + c])
            x = _flip(torch.stack(out), gen, n, keep)
        return _match_channels(x, self.channels)

    def _crops(self, images: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        c = self.crop
        out = []
        for x in images:
            t = int(torch.randint(x.shape[-2] - c + 1, (1,), generator=gen))
            l_ = int(torch.randint(x.shape[-1] - c + 1, (1,), generator=gen))
            out.append(x[:, t : t + c, l_ : l_ + c])
        return torch.stack(out)


def make_source(cfg: PurifierConfig, channels: int, log: Callable[[str], None] = print
                ) -> tuple[CropSource, torch.Tensor | None, str]:
    """(training source, held-out eval images or None, description of the eval images)."""
    data = cfg.data
    if data == "photos":
        from ..data.photos import photo_pool

        pool = photo_pool(channels=channels)
        return CropSource(cfg.crop, cfg.batch_size, cfg.seed, channels, images=pool), None, \
            "random crops of the photo pool (not held out)"
    if data in DATASETS:
        train = load_dataset(data, "train", cfg.data_root)
        try:
            test = load_dataset(data, "test", cfg.data_root)
            held = to_float(test.images[: cfg.eval_images]) if cfg.eval_images else None
            desc = f"{data} test[:{cfg.eval_images}]"
        except DataError:
            held, desc = None, f"random crops of {data} train (not held out)"
        if held is not None:
            held = _match_channels(held, channels)
        return CropSource(cfg.crop, cfg.batch_size, cfg.seed, channels, images=train.images), held, desc
    path = Path(data)
    if not path.exists():
        raise DataError(f"training data {data!r} is neither a dataset ({', '.join(sorted(DATASETS))}) nor an "
                        "existing image folder")
    folder = ImageFolder(path)
    files, skipped = [], 0
    for f in folder.files:
        _, h, w = header_shape(f)
        if h >= cfg.crop and w >= cfg.crop:
            files.append((f, h, w))
        else:
            skipped += 1
    if not files:
        raise DataError(f"no image in {path} is at least {cfg.crop}×{cfg.crop}; use a smaller --crop")
    if skipped:
        log(f"skipping {skipped} image(s) in {path} smaller than the {cfg.crop}×{cfg.crop} crop")
    return CropSource(cfg.crop, cfg.batch_size, cfg.seed, channels, files=files), None, \
        f"random crops of {path.name or path} (not held out)"


# ---------------------------------------------------------------------------------------------------------------
# feature model and adversaries


def load_feature_model(spec: str, layer: str | None, log: Callable[[str], None] = print
                       ) -> tuple[nn.Module, str | None, bool, str]:
    """(frozen eval-mode model, layer for SSP or None, is-a-classifier, note for the card).

    ``spec``: ``zoo:NAME`` / ``.safetensors`` classifier (features at ``layer``, default its
    ``default_feature_layer``), or ``vgg16-features`` (random weights: only for tests and timing) /
    ``vgg16-features:WEIGHTS`` (a torchvision VGG16 state dict) cut after ``layer`` (default conv3_3)."""
    if spec == "vgg16-features" or spec.startswith("vgg16-features:"):
        model = VGG16Features(layer or "conv3_3")
        weights = spec[len("vgg16-features:"):]
        if weights:
            model.load_torchvision_weights(weights)
            note = f"VGG16 {model.layer} ({Path(weights).name})"
        else:
            note = f"VGG16 {model.layer} with RANDOM weights"
            log("warning: vgg16-features without weights has random weights (give vgg16-features:PATH)")
        model.eval().requires_grad_(False)
        return model, None, False, note
    from ..attacks.ssp import TORCHSCRIPT_LAYER_ERROR

    model = load_model(spec)
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise AdvshieldError(TORCHSCRIPT_LAYER_ERROR)
    layer = layer or getattr(model, "default_feature_layer", None)
    if layer is None:
        raise AdvshieldError(f"{spec} has no default feature layer; pass --layer")
    if layer not in dict(model.named_modules()) or not layer:
        some = ", ".join(n for n, _ in list(model.named_modules())[1:8])
        raise AdvshieldError(f"{spec} has no layer {layer!r} (some: {some}...)")
    model.eval().requires_grad_(False)
    return model, layer, True, f"{spec} {layer}"


class Adversary:
    """``adv(x, step)`` → x' for the clean batch x (device tensor), depending only on (seed, step).

    ``kind`` (default ``cfg.adversary``): "ssp", "gaussian", "fgsm", "mi-di" (DIM on the feature classifier's own
    predictions: label-free), or several joined by "+" — the batch is then split into equal consecutive parts,
    one per kind."""

    def __init__(self, cfg: PurifierConfig, model: nn.Module, layer: str | None, is_classifier: bool,
                 kind: str | None = None) -> None:
        self.kind, self.eps, self.seed = kind or cfg.adversary, cfg.eps, cfg.seed
        kinds = self.kind.split("+")
        self.parts = [Adversary(cfg, model, layer, is_classifier, k) for k in kinds] if len(kinds) > 1 else []
        self.attack: Any = None
        if self.parts:
            return
        if self.kind == "ssp":
            self.attack = SSP(model, eps=cfg.eps, alpha=cfg.ssp_alpha, steps=cfg.ssp_steps,
                              random_start=True, layer=layer)
        elif self.kind == "fgsm":
            self.attack = (FGSM(model, eps=cfg.eps) if is_classifier else
                           SSP(model, eps=cfg.eps, alpha=cfg.eps, steps=1, random_start=True, layer=layer))
        elif self.kind == "mi-di":
            if not is_classifier:
                raise AdvshieldError("adversary mi-di needs a classifier as --feature-model (it attacks its "
                                     "predictions)")
            self.attack = ATTACKS.get("mi-di").for_budget(model, cfg.eps)
        elif self.kind != "gaussian":
            raise AdvshieldError(f"unknown adversary {self.kind!r} (known: {', '.join(ADVERSARIES)}, or several "
                                 "joined by +)")

    def __call__(self, x: torch.Tensor, step: int, stream: int = _ADV,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
        """``shard``: (offset of x's first row, rows of the whole batch) when x is part of a larger batch (a
        rank's share under torchrun, a micro-batch): the result is then exactly those rows of the whole batch's."""
        lo, n = shard or (0, len(x))
        if self.parts:  # the whole batch is split among the kinds; x takes its rows of each part
            bounds = [0, *torch.arange(n).tensor_split(len(self.parts))]
            out = []
            for part, rows in zip(self.parts, bounds[1:]):
                if not len(rows):
                    continue
                a, b = int(rows[0]), int(rows[-1]) + 1
                s, e = max(lo, a), min(lo + len(x), b)
                if s < e:
                    out.append(part(x[s - lo : e - lo], step, stream, (s - a, b - a)))
            return torch.cat(out)
        if self.attack is None:  # GNP: N(0, (eps/2)²) clipped to ±eps
            gen = step_generator(self.seed, step, stream)
            noise = global_like(x, lambda sh: torch.randn(sh, generator=gen), (lo, n)).to(x.device, x.dtype)
            return (x + (noise * (self.eps / 2)).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
        self.attack.seed = step_seed(self.seed, step, stream)
        self.attack.shard = None if shard is None or (lo, n) == (0, len(x)) else (lo, n)
        return self.attack(x)


def mix_strengths(x: torch.Tensor, x_adv: torch.Tensor, cfg: PurifierConfig, step: int, stream: int = _MIX,
                  shard: tuple[int, int] | None = None) -> torch.Tensor:
    """x' = clamp(x + s·(x_adv − x)) with one s per sample: s ~ U[eps_min/eps, 1] (1 when ``eps_min`` is None),
    and s = 0 for the first round(clean_fraction·B) samples of the whole batch. x, x_adv: B×C×H×W in [0,1];
    seeded by (seed, step); ``shard`` as for :class:`Adversary`."""
    if cfg.eps_min is None and cfg.clean_fraction <= 0:
        return x_adv
    lo, n = shard or (0, len(x))
    gen = step_generator(cfg.seed, step, stream)
    lo_s = 1.0 if cfg.eps_min is None else cfg.eps_min / cfg.eps
    s = lo_s + (1.0 - lo_s) * torch.rand(n, generator=gen)
    s[: int(round(cfg.clean_fraction * n))] = 0.0
    s = s[lo : lo + len(x)].to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (x + s * (x_adv - x)).clamp(0.0, 1.0)



def _features(extractor: SSP, x: torch.Tensor) -> torch.Tensor:
    """F(x) at the SSP layer (gradients flow to x)."""
    return extractor.outputs(x)


# ---------------------------------------------------------------------------------------------------------------
# the trainer


class PurifierTrainer:
    """Purifier, critic, their optimisers and one training step (Algorithm 2, lines 2–6).

    Under torchrun each rank trains on its rows of every batch: the purifier is wrapped in
    DistributedDataParallel; the critic, called several times per step, has its batch norms computed over the
    global batch (:class:`~advshield.distributed.GlobalBatchNorm`) and its gradients averaged by hand; the RaGAN
    means are global. N processes therefore take the same steps as one process with the whole batch. ``accum``
    splits each rank's rows into that many micro-batches (their gradients summed before one update)."""

    def __init__(self, cfg: PurifierConfig, purifier: nn.Module, feature_model: nn.Module, layer: str | None,
                 is_classifier: bool, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.weights = loss_weights(cfg)
        self.relativistic = not cfg.vanilla_gan
        self.purifier = purifier.to(device)
        out_ch = int(getattr(purifier, "out_channels", getattr(purifier, "in_channels", 3)))
        self.critic = Critic(out_ch, cfg.critic_width).to(device)
        self.parallel = distributed.world()[1] > 1
        if self.parallel:  # called several times per step: not DDP-wrapped (gradients averaged by hand)
            distributed.global_batchnorm(self.critic)
        self.opt_p = torch.optim.Adam(self.purifier.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.net = runtime.data_parallel(self.purifier, device)
        self.feature_model = feature_model.to(device)
        # the SSP object doubles as the feature extractor (its outputs() hook stops at ``layer``)
        self.extractor = SSP(self.feature_model, eps=cfg.eps, layer=layer)
        self.adversary = Adversary(cfg, self.feature_model, layer, is_classifier)
        self.scaler_p = runtime.grad_scaler(cfg.amp, device)
        self.scaler_c = runtime.grad_scaler(cfg.amp, device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return runtime.autocast(self.cfg.amp, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"purifier": self.purifier.state_dict(), "critic": self.critic.state_dict(),
                "opt_p": self.opt_p.state_dict(), "opt_c": self.opt_c.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.purifier.load_state_dict(state["purifier"])
        self.critic.load_state_dict(state["critic"])
        self.opt_p.load_state_dict(state["opt_p"])
        self.opt_c.load_state_dict(state["opt_c"])

    def step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        """One update of P then C on the clean batch x (B×C×H×W in [0,1]; under torchrun this rank's rows of the
        step's batch of ``cfg.batch_size``); returns this process's losses."""
        offset, total = (distributed.rows(self.cfg.batch_size).start, self.cfg.batch_size) if self.parallel \
            else (0, len(x))
        x = x.to(self.device, non_blocking=True)
        self.purifier.train()
        self.critic.train()
        parts = x.tensor_split(max(1, min(self.cfg.accum, len(x))))
        at, micro = offset, []
        for part in parts:  # adversaries (and their clean features) for every micro-batch
            shard = None if (at, total) == (0, len(part)) else (at, total)
            with self.autocast():
                x_adv = mix_strengths(part, self.adversary(part, step, shard=shard), self.cfg, step, shard=shard)
            micro.append((part, x_adv))
            at += len(part)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        # purifier update (critic frozen)
        self.critic.requires_grad_(False)
        self.opt_p.zero_grad(set_to_none=True)
        hats = []
        for i, (part, x_adv) in enumerate(micro):
            with runtime.no_sync(self.net, i == len(micro) - 1):
                losses, x_hat = self._purifier_loss(part, x_adv)
                self.scaler_p.scale(losses["total"] / len(micro)).backward()
            hats.append(x_hat.detach())
            for k, v in losses.items():
                sums[k] += float(v.detach()) / len(micro)
        self.scaler_p.step(self.opt_p)
        self.scaler_p.update()
        # critic update on x vs the detached x̂
        self.critic.requires_grad_(True)
        self.opt_c.zero_grad(set_to_none=True)
        for (part, _), x_hat in zip(micro, hats):
            with self.autocast():
                l_c = critic_loss(self.critic(part).float(), self.critic(x_hat).float(), self.relativistic)
            self.scaler_c.scale(l_c / len(micro)).backward()
            sums["critic"] += float(l_c.detach()) / len(micro)
        distributed.average_gradients(self.critic.parameters())
        self.scaler_c.step(self.opt_c)
        self.scaler_c.update()
        return sums

    def _purifier_loss(self, x: torch.Tensor, x_adv: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The purifier's loss terms on one micro-batch and its output x̂ = P(x')."""
        w = self.weights
        with self.autocast():
            with torch.no_grad():
                f_real = _features(self.extractor, x).float()
            x_hat = self.net(x_adv).float()
            l_img = (x_hat - x).pow(2).mean()
            with torch.set_grad_enabled(w["feat"] > 0):
                l_feat = (_features(self.extractor, x_hat).float() - f_real).abs().mean()
            with torch.no_grad():
                c_real = self.critic(x).float()
            l_adv = purifier_adv_loss(self.critic(x_hat).float(), c_real, self.relativistic)
            total = w["adv"] * l_adv + w["img"] * l_img + w["feat"] * l_feat
        return {"total": total, "feat": l_feat, "img": l_img, "adv": l_adv}, x_hat


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0,1] (N×…); MSE floored at 1e-10."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def evaluate_purifier(trainer: PurifierTrainer, images: torch.Tensor, chunk: int = 64) -> dict[str, float]:
    """Mean PSNR (dB) of x' and of clamp(P(x')) against x, PSNR of clamp(P(x)), and the mean absolute feature
    distance to F(x) of x' and P(x'), on ``images`` (float N×C×H×W in [0,1]) with seeded adversaries."""
    trainer.purifier.eval()
    sums = {"psnr_adv": 0.0, "psnr_purified": 0.0, "psnr_clean_purified": 0.0, "feat_mae_adv": 0.0,
            "feat_mae_purified": 0.0}
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(trainer.device)
        with trainer.autocast():
            x_adv = trainer.adversary(x, i, stream=_EVAL)
            with torch.no_grad():
                pur = trainer.purifier(x_adv).float().clamp(0, 1)
                pur_clean = trainer.purifier(x).float().clamp(0, 1)
                f = _features(trainer.extractor, x).float()
                f_adv = _features(trainer.extractor, x_adv).float()
                f_pur = _features(trainer.extractor, pur).float()
        sums["psnr_adv"] += float(psnr(x_adv, x).sum())
        sums["psnr_purified"] += float(psnr(pur, x).sum())
        sums["psnr_clean_purified"] += float(psnr(pur_clean, x).sum())
        sums["feat_mae_adv"] += float((f_adv - f).abs().flatten(1).mean(1).sum())
        sums["feat_mae_purified"] += float((f_pur - f).abs().flatten(1).mean(1).sum())
    return {k: round(v / max(len(images), 1), 4) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------------------------
# the run


def _batches(source: CropSource, start: int, stop: int, workers: int) -> Iterator[torch.Tensor]:
    if workers <= 0:
        for step in range(start, stop):
            yield source[step]
        return
    loader = DataLoader(source, batch_size=None, sampler=range(start, stop), num_workers=workers,
                        persistent_workers=False)
    yield from loader


def resolve_arch(cfg: PurifierConfig) -> tuple[nn.Module, str]:
    """Build the purifier of ``cfg.arch`` (seeded by the caller); fills ``cfg.arch_args``; returns (net, arch)."""
    net, arch, args = build_purifier_net(cfg.arch)
    cfg.arch_args = args
    return net, arch


def check_config(cfg: PurifierConfig) -> None:
    """One-line errors for settings that cannot work."""
    if cfg.arch not in NRP_CONFIGS:
        raise AdvshieldError(f"unknown purifier arch {cfg.arch!r} (known: {', '.join(sorted(NRP_CONFIGS))})")
    for kind in cfg.adversary.split("+"):
        if kind not in ADVERSARIES:
            raise AdvshieldError(f"unknown adversary {kind!r} (known: {', '.join(ADVERSARIES)}, or several "
                                 "joined by +)")
    for key in ("steps", "batch_size", "crop", "save_every", "log_every", "critic_width"):
        if int(getattr(cfg, key)) < 1:
            raise AdvshieldError(f"{key} must be a positive integer, not {getattr(cfg, key)!r}")
    if "ssp" in cfg.adversary.split("+") and cfg.ssp_steps < 1:
        raise AdvshieldError("ssp_steps must be a positive integer")
    if not 0 < cfg.eps <= 1:
        raise AdvshieldError(f"eps must be in (0, 1] ([0,1] units), not {cfg.eps}")
    if cfg.eps_min is not None and not 0 <= cfg.eps_min <= cfg.eps:
        raise AdvshieldError(f"eps-min must be in [0, eps] = [0, {cfg.eps * 255:g}] (0-255 units), "
                             f"not {cfg.eps_min * 255:g}")
    if not 0 <= cfg.clean_fraction < 1:
        raise AdvshieldError(f"clean fraction must be in [0, 1), not {cfg.clean_fraction}")
    if cfg.amp is True:  # the old boolean switch meant bfloat16
        cfg.amp = "bf16"
    cfg.amp = cfg.amp or None
    check_accum(cfg.accum, cfg.batch_size, cfg.amp)


def train_purifier(cfg: PurifierConfig, out_dir: str | Path, work_dir: str | Path | None = None,
                   resume: bool = True, command: str | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (checkpointing every ``save_every`` steps under ``work_dir``, default OUT/.train/NAME, and
    resuming from there), then write ``OUT/NAME.safetensors`` + card (kind "purifier"). Returns the card."""
    check_config(cfg)
    device, size, log = runtime.start(cfg, log)
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    purifier, arch = resolve_arch(cfg)
    channels = purifier.in_channels
    source, held_out, eval_desc = make_source(cfg, channels, log)
    source.keep = distributed.rows(cfg.batch_size)
    feature_model, layer, is_classifier, feature_note = load_feature_model(cfg.feature_model, cfg.layer, log)
    trainer = PurifierTrainer(cfg, purifier, feature_model, layer, is_classifier, device)
    try:
        with torch.no_grad():
            _features(trainer.extractor, torch.zeros(1, purifier.out_channels, cfg.crop, cfg.crop, device=device))
    except RuntimeError as e:
        raise AdvshieldError(f"feature model {cfg.feature_model} does not take {purifier.out_channels}-channel "
                             f"{cfg.crop}×{cfg.crop} images: {str(e).splitlines()[0]}") from None

    work = Path(work_dir) if work_dir else out_dir / ".train" / cfg.name
    log(f"{cfg.name}: {cfg.arch} ({count_parameters(purifier):,} parameters) on {device}, data {cfg.data}, "
        f"features {feature_note}, adversary {cfg.adversary}, weights {trainer.weights}"
        + (f"; {size} processes × {cfg.batch_size // size} images" if size > 1 else "")
        + (f", {cfg.accum} accumulation steps" if cfg.accum > 1 else ""))
    result = run_steps(cfg.name, cfg.steps,
                       lambda step, x: trainer.step(x, step), work=work,
                       config_key=_config_key(cfg), state_fn=trainer.state_dict, load_fn=trainer.load_state_dict,
                       resume=resume, save_every=cfg.save_every, log_every=cfg.log_every, log=log,
                       batches=lambda start, stop: _batches(source, start, stop, cfg.workers))
    last, elapsed = result.last, result.elapsed
    if not distributed.is_main():  # rank 0 evaluates and writes; the others return its card
        return distributed.broadcast(None)

    metrics: dict[str, Any] = {f"final_loss_{k}": round(v, 6) for k, v in last.items() if math.isfinite(v)}
    if cfg.eval_images > 0:
        images = held_out if held_out is not None else source.sample(
            cfg.eval_images, step_generator(cfg.seed, 0, _EVAL))
        metrics.update(evaluate_purifier(trainer, images))
        metrics["eval_images"] = len(images)
        metrics["eval_set"] = eval_desc
        log(f"{cfg.name}: PSNR adversarial {metrics['psnr_adv']:.2f} dB → purified {metrics['psnr_purified']:.2f} dB "
            f"({eval_desc})")
    trainer.purifier.eval()
    card = {
        "name": cfg.name, "kind": "purifier", "dataset": cfg.data, "architecture": arch,
        "arch_args": cfg.arch_args, "config": cfg.arch, "parameters": count_parameters(purifier),
        "input": {"channels": channels, "size": "any", "range": [0, 1]},
        "metrics": metrics,
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("data_root", "device", "threads",
                                                                          "arch_args", "workers")},
                     "feature_extractor": feature_note, "loss_weights": trainer.weights,
                     "gan": "vanilla" if cfg.vanilla_gan else "relativistic-average (paper Eq. 7 form)",
                     "train_time_s": round(elapsed, 1), "device": str(device), "torch": torch.__version__},
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
    }
    card["training"]["betas"] = list(cfg.betas)
    card["training"]["processes"] = size
    return distributed.broadcast(save_checkpoint(trainer.purifier.cpu(), out_dir / f"{cfg.name}.safetensors",
                                                 card))

