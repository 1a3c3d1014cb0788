"""Modality encoders ("towers"), built by name from a registry. A kind's own towers are in the module named
after it (image, text, sequence, range, points, video); pretrained families have theirs (hf_*, openclip,
pretrained, exported). Importing `range` rebinds the name here to that module, as in kinds/__init__.py."""

from jointspace.towers import (  # noqa: F401  (register the built-in towers; heavy imports are lazy)
    exported,
    hf_image,
    hf_text,
    image,
    openclip,
    points,
    pretrained,
    range,
    sequence,
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
