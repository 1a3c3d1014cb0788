"""Modality encoders ("towers"), built by name from a registry."""

from jointspace.towers import audio, depth, image, text  # noqa: F401  (register the built-in towers)
from jointspace.towers.registry import build_tower, list_towers, register_tower

__all__ = ["build_tower", "list_towers", "register_tower"]
