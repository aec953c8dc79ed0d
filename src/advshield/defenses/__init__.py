"""Defenses. Importing this package registers every defense in :data:`advshield.registry.DEFENSES`.

:func:`defend` puts defenses (objects, spec strings such as ``"jpeg:quality=50+median"``, or lists) in front of a
model; :func:`build_defense` is the one builder behind it (see :mod:`advshield.defenses.spec`)."""
from .base import Defended, Defense, Identity
from .fru import FRU, FRUNet, insert_frus
from .jpeg import JPEG
from .purifier import ChannelGuard, PerChannel, defend, load_purifier
from .shipped import NRPDefense, NRPDynamicDefense, NRPResGDefense  # the zoo purifiers
from .shipped_ae import AEDefense, VAEDefense  # the zoo autoencoders; registers the ae/vae purifiers
from .shipped_diffusion import DiffPureDefense  # DiffPure with zoo:ddpm-fmnist
from .spec import Stack, build_defense, compatible_defenses, describe_defense, parse_defense_spec
from .transforms import BitDepth, GaussianBlur, Median, RandomResizePad
from .tvm import TVM

__all__ = [
    "FRU", "JPEG", "TVM", "AEDefense", "BitDepth", "ChannelGuard", "Defended", "Defense", "DiffPureDefense",
    "FRUNet", "GaussianBlur",
    "Identity", "Median", "NRPDefense", "NRPDynamicDefense", "NRPResGDefense", "PerChannel", "RandomResizePad",
    "Stack", "VAEDefense", "build_defense", "compatible_defenses", "defend", "describe_defense", "insert_frus",
    "load_purifier", "parse_defense_spec",
]
