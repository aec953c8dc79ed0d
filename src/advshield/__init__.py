"""advshield: transferable attacks, purifier defenses and honest robustness evaluation for image classifiers.

Convention everywhere: float images in [0,1], N×C×H×W; classifiers are ``nn.Module``s returning logits with
normalisation inside.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import attacks, defenses  # noqa: F401  (registers attacks and defenses)
from .defenses import defend, load_purifier
from .errors import AdvshieldError, DataError, ModelError
from .models import load_model
from .registry import ATTACKS, DEFENSES, MODELS, PURIFIERS, UNIVERSAL

__all__ = ["ATTACKS", "DEFENSES", "MODELS", "PURIFIERS", "UNIVERSAL", "AdvshieldError", "DataError", "ModelError",
           "AuditResult", "__version__", "audit", "defend", "load_model", "load_purifier"]


def __getattr__(name: str):
    """``advshield.audit`` / ``advshield.AuditResult`` (:mod:`advshield.eval.audit`), imported on first use."""
    if name in ("audit", "AuditResult"):
        from .eval import audit as module

        return getattr(module, name)
    raise AttributeError(f"module 'advshield' has no attribute {name!r}")
