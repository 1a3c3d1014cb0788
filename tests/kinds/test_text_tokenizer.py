"""The default text tokenizer is open_clip's own BPE tokenizer, run from its file alone so that a process
that only tokenizes (every training run with the default text tower) does not import open_clip's models."""

from __future__ import annotations

import subprocess
import sys

import torch

from jointspace.kinds.text import make_tokenizer

TEXTS = ["a red square", "the digit seven", "Ünïcödé  text, with &amp; html!", "", "x " * 40]


def test_default_tokenizer_gives_open_clips_ids():
    from open_clip.tokenizer import SimpleTokenizer

    for length in (5, 16, 77):
        ours = make_tokenizer(length)(TEXTS)
        assert torch.equal(ours, SimpleTokenizer(context_length=length)(TEXTS, context_length=length))


def test_tokenizing_and_reading_images_import_neither_open_clip_nor_torchvision():
    """Importing either costs a process 1.5-2.5 s; a small training run's start is mostly imports."""
    code = ("import sys, numpy as np\n"
            "from jointspace.kinds.text import make_tokenizer\n"
            "from jointspace.kinds.image import image_to_tensor\n"
            "make_tokenizer(16)(['a cube']); image_to_tensor([np.zeros((8, 8), np.uint8)], 4)\n"
            "print(sorted(m for m in ('open_clip', 'torchvision', 'timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
