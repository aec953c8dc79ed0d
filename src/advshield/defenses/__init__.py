"""Defenses. Importing this package registers every defense in :data:`advshield.registry.DEFENSES`."""
from .base import Defended, Defense, Identity, defend
from .fru import FRU, FRUNet, insert_frus
from .jpeg import JPEG
from .transforms import BitDepth, GaussianBlur, Median, RandomResizePad
from .tvm import TVM
from .shipped import NRPDefense, NRPDynamicDefense, NRPResGDefense  # noqa: E402  (the zoo purifiers)
from .shipped_ae import AEDefense, VAEDefense  # noqa: E402  (the zoo autoencoders; registers ae/vae purifiers)

__all__ = ["Defended", "Defense", "FRU", "FRUNet", "Identity", "defend", "insert_frus",
           "BitDepth", "GaussianBlur", "JPEG", "Median", "NRPDefense", "NRPDynamicDefense", "NRPResGDefense",
           "RandomResizePad", "TVM", "AEDefense", "VAEDefense"]
