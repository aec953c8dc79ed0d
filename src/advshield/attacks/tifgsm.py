"""TI-FGSM (Dong et al. 2019): gradients smoothed by a fixed kernel (translation invariance), with DI and momentum."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number
from ..errors import AdvshieldError
from ..registry import ATTACKS
from .difgsm import DIFGSM

KERNELS = ("gaussian", "linear", "uniform")


def ti_kernel(name: str = "gaussian", length: int = 15, nsig: float = 3) -> torch.Tensor:
    """A ``length``×``length`` float32 kernel summing to 1 (computed in float64).

    gaussian: outer product of the standard normal density at ``linspace(-nsig, nsig, length)``;
    linear: outer product of the tent 1 − |t|·2/(length+1), t = linspace(−(length−1)/2, (length−1)/2);
    uniform: constant."""
    length = int(check_number(length, "len_kernel", low=1, integer=True))
    nsig = check_number(nsig, "nsig", low=0.0, low_open=True)
    if name == "gaussian":
        t = torch.linspace(-nsig, nsig, length, dtype=torch.float64)
        k1 = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    elif name == "linear":
        t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, length, dtype=torch.float64)
        k1 = 1 - (t / (length + 1) * 2).abs()
    elif name == "uniform":
        k1 = torch.ones(length, dtype=torch.float64)
    else:
        raise AdvshieldError(f"kernel_name must be one of {', '.join(KERNELS)}, not {name!r}")
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).float()


@ATTACKS.register("tifgsm", "translation-invariant FGSM: kernel-smoothed gradients, with input diversity (Dong 2019)")
class TIFGSM(DIFGSM):
    """``TIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=0.0, kernel_name="gaussian", len_kernel=15,
    nsig=3, resize_rate=0.9, diversity_prob=0.5, random_start=False, eot_iter=1)``; images N×C×H×W in [0,1], any C.

    Each gradient is convolved per channel (depthwise, same padding) with :func:`ti_kernel`, then goes through
    MI-FGSM's momentum (when ``decay`` > 0). ``diversity_prob=0`` disables input diversity. ``len_kernel``: odd,
    >= 1 (centred "same" smoothing); ``nsig`` > 0. ``eot_iter``: the gradient is averaged over that many draws before
    the smoothing."""

    name = "tifgsm"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 0.0, kernel_name: str = "gaussian", len_kernel: int = 15, nsig: float = 3,
                 resize_rate: float = 0.9, diversity_prob: float = 0.5, random_start: bool = False,
                 seed: int | None = None, resize_mode: str = "bilinear", eot_iter: int = 1) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, resize_rate=resize_rate,
                         diversity_prob=diversity_prob, random_start=random_start, seed=seed,
                         resize_mode=resize_mode, eot_iter=eot_iter)
        if check_number(len_kernel, "len_kernel", low=1, integer=True) % 2 == 0:
            raise AdvshieldError(f"len_kernel must be odd (a centred kernel), not {len_kernel!r}")
        self.kernel_name, self.len_kernel = kernel_name, int(len_kernel)
        self.nsig = check_number(nsig, "nsig", low=0.0, low_open=True)
        self.kernel = ti_kernel(kernel_name, len_kernel, nsig)  # len×len, CPU float32
        self._weights: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def _weight(self, grad: torch.Tensor) -> torch.Tensor:
        """The depthwise conv weight C×1×k×k on ``grad``'s device and dtype (built once per combination)."""
        key = (grad.device, grad.dtype, grad.shape[1])
        if key not in self._weights:
            k = self.kernel.to(device=grad.device, dtype=grad.dtype)
            self._weights[key] = k.expand(grad.shape[1], 1, *k.shape).contiguous()
        return self._weights[key]

    def smooth(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` N×C×H×W convolved channel-wise with the kernel (same size out)."""
        return F.conv2d(grad, self._weight(grad), padding="same", groups=grad.shape[1])

    def grad_transform(self, grad: torch.Tensor) -> torch.Tensor:
        return self.accumulate(self.smooth(grad))
