"""Defenses. Importing this package registers every defense in :data:`advshield.registry.DEFENSES`."""
from .base import Defended, Defense, Identity, defend

__all__ = ["Defended", "Defense", "Identity", "defend"]
