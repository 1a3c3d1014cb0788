"""Modality encoders ("towers"), built by name from a registry."""

from jointspace.towers import audio, depth, hf_text, image, openclip, pretrained, text  # noqa: F401  (register the built-in towers)  # noqa: F401  (pretrained towers; heavy imports are lazy)
from jointspace.towers.registry import build_tower, list_towers, register_tower, tower_tokenizer

__all__ = ["build_tower", "list_towers", "register_tower", "tower_tokenizer"]
