"""Attacks. Importing this package registers every per-image attack in :data:`advshield.registry.ATTACKS` and
every universal attack (package :mod:`.universal`) in :data:`advshield.registry.UNIVERSAL`."""
from .base import Attack, GradientAttack, frozen_eval
from .difgsm import DIFGSM, input_diversity
from .ensemble import Ensemble
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .mixes import DIM, DIMTI, MIDIFGSM, MIDITIFGSM
from .pgd import BIM, IFGSM, PGD, PGDL2
from .rfgsm import RFGSM
from .ssp import SSP
from .threat import BudgetError, ThreatModel
from .tifgsm import TIFGSM, ti_kernel
from .universal import FFF, GAP, SPGD, UAP, UniversalAttack

__all__ = ["Attack", "BIM", "BudgetError", "DIFGSM", "DIM", "DIMTI", "Ensemble", "FFF", "FGSM", "GAP", "GradientAttack",
           "IFGSM", "MIDIFGSM", "MIDITIFGSM", "MIFGSM", "PGD", "PGDL2", "RFGSM", "SPGD", "SSP", "TIFGSM", "ThreatModel",
           "UAP", "UniversalAttack", "frozen_eval", "input_diversity", "ti_kernel"]
