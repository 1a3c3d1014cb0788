"""Modality encoders ("towers"), built by name from a registry."""

from jointspace.towers import (  # noqa: F401  (register the built-in towers; heavy imports are lazy)
    audio,
    depth,
    exported,
    hf_image,
    hf_text,
    image,
    openclip,
    pointnet,
    pretrained,
    text,
    video,
)
from jointspace.towers.registry import (
    build_tower,
    list_towers,
    register_tower,
    tower_parameters,
    tower_pretrained,
    tower_summary,
    tower_tokenizer,
)

__all__ = ["build_tower", "list_towers", "register_tower", "tower_parameters", "tower_pretrained", "tower_summary", "tower_tokenizer"]
