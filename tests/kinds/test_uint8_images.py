"""Images stay uint8 until they are used: in memory, through the loader's workers and over to the device;
there `ImageKind.on_device` maps them to [-1, 1] exactly as the float path did (value / 127.5 - 1)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jointspace.data.dataset import load_split
from jointspace.data.shards import split_urls
from jointspace.data.stream import ShardStream, stream_loader
from jointspace.kinds import Prep, get_kind
from jointspace.kinds import image as image_mod
from jointspace.kinds.image import image_to_tensor


def test_to_tensors_keeps_uint8_and_on_device_gives_the_old_values():
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    kind = get_kind("image")
    x = kind.to_tensors("image", pics, Prep(image_size=16))["image"]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 16, 16)
    ready = kind.on_device(x)
    expected = torch.from_numpy(np.stack(pics).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    assert ready.dtype == torch.float32 and torch.equal(ready, expected)
    assert kind.on_device(ready) is ready  # idempotent
    resized = kind.to_tensors("image", pics, Prep(image_size=24))["image"]
    assert resized.dtype == torch.uint8 and resized.shape == (3, 3, 24, 24)


def test_the_in_memory_split_is_uint8_and_its_batches_are_ready(digits_dir):
    data = load_split(digits_dir, "train", ["image", "text"], Prep(image_size=16))
    assert data.inputs["image"].dtype == torch.uint8  # 4x less memory than float32
    batch = data.batch(torch.arange(4))
    assert batch["image"].dtype == torch.float32 and -1.0 <= float(batch["image"].min()) <= float(batch["image"].max()) <= 1.0
    assert torch.equal(batch["image"], data.inputs["image"][:4].float() / 127.5 - 1.0)


def test_no_float_images_through_the_loaders_workers(digits_dir):
    stream = ShardStream(split_urls(digits_dir, "train"), {"image": "image", "text": "text"}, 8, prep=Prep(image_size=16))
    batch = next(iter(stream_loader(stream, num_workers=1)))
    assert batch["image"].dtype == torch.uint8 and batch["text"].dtype == torch.int64


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"),
                                           ("PNG", "I;16"), ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK")])
def test_shard_images_decode_to_what_pil_gives(fmt, mode, monkeypatch):
    """Grey and RGB PNG/JPEG (of at least 96x96) go through torchvision.io, the rest through PIL: the same
    pixels either way, and the same batch tensor as from a plain [H, W(, C)] array."""
    rng = np.random.default_rng(1)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize((128, 128)))
    img = Image.fromarray(smooth).convert(mode if mode != "I;16" else "L")
    img = img.convert("I;16") if mode == "I;16" else img
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as pil:
        expected = np.asarray(pil if pil.mode in ("L", "RGB") else pil.convert("RGB"))
    calls = []
    real = image_mod.decode_torchvision
    monkeypatch.setattr(image_mod, "decode_torchvision", lambda *a: calls.append(1) or real(*a))
    got = get_kind("image").decode(fmt.lower(), buf.getvalue())
    assert len(calls) == (mode in ("L", "RGB"))  # which decoder ran
    assert got.dtype == np.uint8 and got.shape == expected.shape and np.array_equal(got, expected)
    assert torch.equal(image_to_tensor([got], 128), image_to_tensor([np.ascontiguousarray(expected)], 128))


def test_a_truncated_image_is_an_error_not_a_picture():
    buf = io.BytesIO()
    Image.fromarray(np.full((128, 128, 3), 90, dtype=np.uint8)).save(buf, format="JPEG")
    with pytest.raises((RuntimeError, OSError)):
        get_kind("image").decode("jpg", buf.getvalue()[: len(buf.getvalue()) // 2])
