"""The default text tokenizer is open_clip's own BPE tokenizer, run from its file alone so that a process
that only tokenizes (every training run with the default text tower) does not import open_clip's models."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

TEXTS = ["a red square", "the digit seven", "Ünïcödé  text, with &amp; html!", "", "x " * 40]


def test_the_file_run_alone_gives_open_clips_ids_and_imports_neither_open_clip_nor_torchvision():
    """In a fresh process (open_clip not imported: the tokenizer file runs alone), the ids equal open_clip's
    SimpleTokenizer's; importing open_clip or torchvision would cost the process 1.5-2.5 s each."""
    code = ("import json, sys, numpy as np\n"
            "from jointspace.kinds.text import _openclip_tokenizer_module, make_tokenizer\n"
            "from jointspace.kinds.image import image_to_tensor\n"
            f"ids = {{n: make_tokenizer(n)({TEXTS!r}).tolist() for n in (5, 16, 77)}}\n"
            "image_to_tensor([np.zeros((8, 8), np.uint8)], 4)\n"
            "print(json.dumps([ids, _openclip_tokenizer_module().__name__,\n"
            "                  sorted(m for m in ('open_clip', 'torchvision', 'timm', 'transformers') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ids, module, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert module == "jointspace_openclip_tokenizer" and imported == [], out.stdout + out.stderr
    from open_clip.tokenizer import SimpleTokenizer

    for n, got in ids.items():
        assert torch.equal(torch.tensor(got), SimpleTokenizer(context_length=int(n))(TEXTS, context_length=int(n)))
