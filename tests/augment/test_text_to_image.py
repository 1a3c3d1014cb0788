"""The text-to-image path, offline: a tiny Stable Diffusion pipeline (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel with random weights, a CLIP tokenizer written here) saved with save_pretrained and run
through `jointspace augment sample`, text-to-image and image-to-image, with every scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.diffusion.model import SCHEDULERS


def _clip_tokenizer(folder):
    """A CLIP byte-level BPE tokenizer over the 256 byte symbols (no merges), written as vocab + merges."""
    from open_clip.tokenizer import bytes_to_unicode  # the byte symbols of CLIP's BPE
    from transformers import CLIPTokenizer

    symbols = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(vocab)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny Stable Diffusion pipeline folder (16x16 images, 8x8 latents)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("tiny-sd")
    tok_dir = folder / "tok"
    tok_dir.mkdir()
    tokenizer, vocab = _clip_tokenizer(tok_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77,
                                        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory):
    """Two classes of real 16x16 RGB images for image-to-image."""
    from jointspace.data.shards import write_dataset

    rng = np.random.default_rng(0)
    samples = [{"key": f"s{i}", "image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "label": i % 2}
               for i in range(8)]
    root = tmp_path_factory.mktemp("real") / "shards"
    write_dataset(root, {"train": samples}, {"image": "image"}, ["cat", "dog"])
    return root


def _sample(tiny_sd, out, *extra: str) -> np.ndarray:
    args = ["augment", "sample", str(tiny_sd), "--out", str(out), "--class", "cat", "--class", "dog",
            "--n-per-class", "2", "--steps", "3", "--grid-guidance", "", "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return np.stack([np.asarray(Image.open(out / c / f"{i:05d}.png")) for c in ("cat", "dog") for i in range(2)])


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a.astype(int) - b.astype(int)).max() > 0)


@pytest.mark.parametrize("mode", ["text", "image"])
def test_seed_scheduler_guidance_and_negative_prompt_decide_the_images(tiny_sd, real_shards, tmp_path, mode):
    img2img = ["--strength", "0.7", "--data", str(real_shards)] if mode == "image" else []
    base = ["--seed", "0", "--scheduler", "ddim", "--guidance", "7", "--prompt", "a photo of a {}", *img2img]
    first = _sample(tiny_sd, tmp_path / "a", *base)
    assert first.shape == (4, 16, 16, 3) and first.dtype == np.uint8
    assert not _differ(first, _sample(tiny_sd, tmp_path / "b", *base))  # the same seed: the same images
    assert _differ(first, _sample(tiny_sd, tmp_path / "c", *base[:1], "1", *base[2:]))  # another seed
    assert _differ(first, _sample(tiny_sd, tmp_path / "d", *base, "--scheduler", "euler-a"))
    assert _differ(first, _sample(tiny_sd, tmp_path / "e", *base, "--guidance", "1"))
    assert _differ(first, _sample(tiny_sd, tmp_path / "f", *base, "--negative-prompt", "blurry, dark"))
    if mode == "image":  # the real images are the start: a lower strength keeps more of them
        weaker = [a if a != "0.7" else "0.4" for a in base]
        assert _differ(first, _sample(tiny_sd, tmp_path / "g", *weaker))
    saved = json.loads((tmp_path / "f" / "samples.json").read_text())
    assert saved["negative_prompt"] == "blurry, dark" and saved["strength"] == (0.7 if mode == "image" else None)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_runs_the_pipeline(tiny_sd, tmp_path, scheduler):
    images = _sample(tiny_sd, tmp_path / scheduler, "--scheduler", scheduler, "--guidance", "3")
    assert images.shape == (4, 16, 16, 3)


def test_a_hub_id_offline_and_not_cached_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache built here
    result = CliRunner().invoke(app, ["augment", "sample", "nobody/no-such-pipeline", "--out", str(tmp_path / "o"),
                                      "--class", "cat", "--grid-guidance", ""])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE" in result.output and "cache" in result.output


def test_explore_scores_every_cell_with_the_joint_space(tiny_sd, tiny_cfg, tmp_path):
    """guidance x steps x scheduler at one seed: a row per cell with R@1, cosine and seconds; an HTML page."""
    from jointspace.tasks.contrastive import train

    joint = train(tiny_cfg("eval.linear_probe=false", epochs=1), show_progress=False)
    args = ["augment", "explore", str(tiny_sd), "--joint", str(joint), "--out", str(tmp_path / "x"),
            "--class", "one", "--class", "seven", "--guidance", "1,7", "--steps", "2,3", "--scheduler", "ddim,unipc",
            "--n", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "x" / "explore.json").read_text())["cells"]
    assert len(cells) == 8 and {(c["scheduler"], c["guidance"], c["steps"]) for c in cells} == {
        (s, g, n) for s in ("ddim", "unipc") for g in (1.0, 7.0) for n in (2, 3)}
    for c in cells:
        assert 0 <= c["R@1"] <= 1 and -1 <= c["cosine"] <= 1 and c["seconds"] > 0 and c["scored"] == 4
    page = (tmp_path / "x" / "explore.html").read_text()
    assert "image-&gt;text R@1" in page and "data:image/png;base64," in page


def test_fix_driven_by_prompts_img2img_and_the_joint_space_filter(tiny_sd, tiny_cfg, digits_dir, tmp_path):
    """augment fix with a text-to-image pipeline: each target's prompts are its name and its captions
    nearest the class it is confused with; image-to-image from its real images. The run's own joint
    space as a filter keeps real images of the class and drops the confused class's, and stops the
    loop with a clear error when it rejects every generated image (the random tiny pipeline's)."""
    import sys

    from jointspace.augment.fix import run_fix
    from jointspace.augment.prompted import judge
    from jointspace.augment.sample import real_images
    from jointspace.diffusion.config import load_augment_config
    from jointspace.tasks.contrastive import train

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_augment_overrides

    run = train(tiny_cfg("loss.positives=label", name="contrastive", epochs=2), show_progress=False)
    sets = [*tiny_augment_overrides("ignored", tmp_path / "unused", steps=4), "fix.worst=1", "fix.n_per_class=8",
            "fix.oversample_control=false", "fix.strength=0.7", "fix.confused_captions=2",
            "fix.negative_prompt=blurry", "sample.steps=3", "sample.guidance=5"]
    result = run_fix(run, load_augment_config(None, sets), diffusion=tiny_sd, out=tmp_path / "fix", log=lambda _: None)
    (target,) = result["targets"]
    gen = result["generation"]
    prompts = gen["prompts"][target]
    assert prompts[0] == f"a photo of a {target}" and len(prompts) == 3  # the template + 2 captions of the class
    assert all(target in p for p in prompts[1:])  # digits captions name their class
    assert gen["strength"] == 0.7 and gen["negative_prompt"] == "blurry" and result["n_generated"] == 8
    assert set(result["runs"]) == {"before", "generated"}

    other = next(p["predicted"] for p in result["analysis"]["most_confused"] if p["true"] == target)
    real = real_images(digits_dir, [target, other])
    images = np.concatenate([real[0], real[1]])  # real images of the target and of the confused class
    kept, counts = judge(run, result["analysis"], {target: images})
    from jointspace.augment.explore import class_centroids
    from jointspace.index.query import Encoder

    enc = Encoder.from_run(run)  # by hand: nearer the target's caption centroid than the confused class's
    names = enc.info["class_names"]
    cents = class_centroids(enc, names)
    emb = enc.encode("image", list(images), check=False)
    nearer = emb @ cents[names.index(target)] > emb @ cents[names.index(other)]
    assert counts[target] == {"kept": int(nearer.sum()), "dropped": int((~nearer).sum()), "confused_with": other}
    assert np.array_equal(kept[target], images[nearer])
    with pytest.raises(ValueError, match="placed every generated image nearer the confused class"):
        run_fix(run, load_augment_config(None, [*sets, "fix.filter=true"]), diffusion=tiny_sd,
                out=tmp_path / "fix2", log=lambda _: None)
