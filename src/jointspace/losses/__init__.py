"""Losses of the joint space: one `PairLoss` module per loss, registered by name (config `loss.name`,
its `loss.params` checked by the loss's own params model), composed over modality pairs by `BindingLoss`;
positive masks and exclusions (masks.py: a guide run's false negatives); distillation from a teacher
space (distill.py); pytorch-metric-learning losses for the metric task (`metric.py`).

Adding a loss: a module with a `PairLoss` subclass (and its `Params`), and a `register(...)` line here."""

from jointspace.losses.base import LossContext, LossParams, PairLoss
from jointspace.losses.binding import BindingLoss, binding_pairs
from jointspace.losses.distill import distill_loss
from jointspace.losses.infonce import InfoNCE, clip_loss
from jointspace.losses.logits import LogitParameters
from jointspace.losses.masks import Exclusions, guide_exclusions, positive_mask
from jointspace.losses.metric import build_metric_loss
from jointspace.losses.pml import PMLLoss
from jointspace.losses.registry import LOSSES, build_pair_loss, loss_class, loss_params, register
from jointspace.losses.siglip import SigLIP, siglip_loss
from jointspace.losses.triplet import TripletMargin

register("infonce", InfoNCE)
register("siglip", SigLIP)
register("triplet", TripletMargin)
register("pml", PMLLoss)

__all__ = ["LOSSES", "BindingLoss", "Exclusions", "InfoNCE", "LogitParameters", "LossContext", "LossParams", "PMLLoss", "PairLoss", "SigLIP",
           "TripletMargin", "binding_pairs", "build_metric_loss", "build_pair_loss", "clip_loss", "distill_loss",
           "guide_exclusions", "loss_class", "loss_params", "positive_mask", "register", "siglip_loss"]
