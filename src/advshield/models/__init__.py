"""Classifier families, VGG16 features, checkpoints, the zoo, model specs and input domains.

``load_model(spec)`` (see :mod:`advshield.models.specs`) is the entry point."""
from __future__ import annotations

from .checkpoint import card_path, load_checkpoint, load_weights, read_card, read_weights, save_checkpoint
from .domain import ChannelAdapter, InputDomain, adapt_channels, check_domain, input_channels, input_domain
from .fmnist import LeNet, ResNet, VGGNet
from .layers import Normalize
from .outputs import LogitsOutput, ModelWrapper, Normalized, find_layer, is_torchscript, unwrap
from .specs import CLASSIFIER_KINDS, load_model, load_models, short_name
from .vgg16 import IMAGENET_MEAN, IMAGENET_STD, VGG16Features, vgg16_features
from .zoo import resolve_base, zoo_base_spec, zoo_cards, zoo_path

__all__ = ["CLASSIFIER_KINDS", "IMAGENET_MEAN", "IMAGENET_STD", "ChannelAdapter", "InputDomain", "LeNet",
           "LogitsOutput", "ModelWrapper", "Normalize", "Normalized", "ResNet", "VGG16Features", "VGGNet",
           "adapt_channels", "card_path", "check_domain", "find_layer", "input_channels", "input_domain",
           "is_torchscript", "load_checkpoint", "load_model", "load_models", "load_weights", "read_card",
           "read_weights", "resolve_base", "save_checkpoint", "short_name", "unwrap", "vgg16_features",
           "zoo_base_spec", "zoo_cards", "zoo_path"]
