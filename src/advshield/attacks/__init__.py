"""Attacks. Importing this package registers every attack in :data:`advshield.registry.ATTACKS`."""
from .base import Attack, GradientAttack, frozen_eval
from .fgsm import FGSM
from .pgd import BIM, IFGSM, PGD, PGDL2
from .threat import BudgetError, ThreatModel

__all__ = ["Attack", "BIM", "BudgetError", "FGSM", "GradientAttack", "IFGSM", "PGD", "PGDL2", "ThreatModel",
           "frozen_eval"]
