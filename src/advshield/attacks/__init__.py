"""Attacks. Importing this package registers every per-image attack in :data:`advshield.registry.ATTACKS` and
every universal attack (package :mod:`.universal`) in :data:`advshield.registry.UNIVERSAL`."""
from .apgd import APGD, APGDL2, APGDT, APGDTL2
from .autoattack import AutoAttack
from .base import Attack, GradientAttack, frozen_eval
from .cw import CW, CWLinf
from .deepfool import DeepFool
from .difgsm import DIFGSM, input_diversity
from .ensemble import Ensemble, hold_one_out
from .fab import FAB, FABL2
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .mixes import DIM, DIMTI, MIDIFGSM, MIDITIFGSM
from .pgd import BIM, IFGSM, PGD, PGDL2
from .rfgsm import RFGSM
from .square import Square, SquareL2
from .ssp import SSP
from .threat import BudgetError, ThreatModel
from .tifgsm import TIFGSM, ti_kernel
from .universal import FFF, GAP, SPGD, UAP, UniversalAttack

__all__ = ["AutoAttack", "APGD", "APGDL2", "APGDT", "APGDTL2",
           "CW", "CWLinf", "DeepFool", "FAB", "FABL2", "Square", "SquareL2",
           "Attack", "BIM", "BudgetError", "DIFGSM", "DIM", "DIMTI", "Ensemble", "FFF", "FGSM", "GAP", "GradientAttack",
           "IFGSM", "MIDIFGSM", "MIDITIFGSM", "MIFGSM", "PGD", "PGDL2", "RFGSM", "SPGD", "SSP", "TIFGSM", "ThreatModel",
           "UAP", "UniversalAttack", "frozen_eval", "hold_one_out", "input_diversity", "ti_kernel"]
