"""Universal (image-agnostic) perturbations: one δ (float32 C×H×W, [0,1] units) fools a model on most images.

Importing this package registers UAP, sPGD, FFF and GAP in :data:`advshield.registry.UNIVERSAL`.
``delta = UAP(model, eps=10/255).fit(images)``; ``x_adv = apply_perturbation(x, delta)``."""
from .base import (
    FitSet,
    UniversalAttack,
    apply_perturbation,
    ascent_step,
    fooling_rate,
    predict,
    project,
    random_perturbation,
)
from .fff import FFF
from .gap import GAP, PerturbationGenerator
from .io import load_perturbation, perturbation_png, save_perturbation
from .spgd import SPGD
from .uap import UAP, deepfool

__all__ = ["FFF", "FitSet", "GAP", "PerturbationGenerator", "SPGD", "UAP", "UniversalAttack", "apply_perturbation",
           "ascent_step", "deepfool", "fooling_rate", "load_perturbation", "perturbation_png", "predict", "project",
           "random_perturbation", "save_perturbation"]
