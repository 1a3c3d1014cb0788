"""The sampler: shapes and ranges, determinism by seed, class conditioning, local pipeline folders, CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jointspace.augment.sample import ClassSampler, PipelineSampler, load_sampler
from jointspace.cli import app


@pytest.fixture(scope="module")
def sampler(diffusion_run):
    return ClassSampler.from_run(diffusion_run, device="cpu")


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_shapes_ranges_and_determinism(sampler, scheduler):
    a = sampler.sample_class(3, 5, guidance=2.0, steps=3, scheduler=scheduler, seed=0, batch_size=2)
    assert a.shape == (5, 8, 8) and a.dtype == np.uint8 and a.std() > 0
    assert np.array_equal(a, sampler.sample_class(3, 5, 2.0, 3, scheduler, seed=0, batch_size=2))
    assert not np.array_equal(a, sampler.sample_class(3, 5, 2.0, 3, scheduler, seed=1, batch_size=2))
    assert not np.array_equal(a[:2], a[2:4])  # images of one call differ from each other


def test_class_conditioning_and_guidance_change_the_prediction(sampler):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    eps = {c: sampler._eps(x, t, torch.full((4,), c), 1.0) for c in (2, 7)}
    assert not torch.allclose(eps[2], eps[7])
    assert not torch.allclose(sampler._eps(x, t, torch.full((4,), 2), 3.0), eps[2])
    uncond = sampler._eps(x, t, torch.full((4,), 2), 0.0)
    assert torch.allclose(uncond, sampler._eps(x, t, torch.full((4,), 7), 0.0))  # the null class for all
    with pytest.raises(ValueError, match="class id 10 out of range"):
        sampler.sample_class(10, 1)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A tiny DDPMPipeline saved with save_pretrained (no download)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    path = tmp_path_factory.mktemp("pipeline") / "tiny-ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(str(path))
    return path


def test_local_pipeline_folder(pipeline_dir):
    s = load_sampler(pipeline_dir, device="cpu", class_names=["cat", "dog"])
    assert isinstance(s, PipelineSampler) and s.mode == "unconditional"
    a = s.sample_class(1, 3, steps=2, scheduler="ddim", seed=0)
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    assert np.array_equal(a, s.sample_class(1, 3, steps=2, scheduler="ddim", seed=0))
    assert not np.array_equal(a, s.sample_class(1, 3, steps=2, scheduler="ddim", seed=1))
    assert s.sample_class(0, 2, steps=2, scheduler="ddpm", seed=0).shape == (2, 8, 8, 3)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_sampler(tmp_path)


def test_cli_sample_writes_class_folders_and_grid(diffusion_run, pipeline_dir, tmp_path):
    out = tmp_path / "samples"
    result = CliRunner().invoke(app, ["augment", "sample", str(diffusion_run), "--out", str(out), "--n-per-class", "2",
                                      "--steps", "2", "--class", "three", "--class", "seven", "--grid-guidance", "0,3",
                                      "--grid-steps", "1,2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "samples.json", "seven", "three"]
    assert len(list((out / "three").glob("*.png"))) == 2
    assert json.loads((out / "samples.json").read_text())["n_images"] == 4
    result = CliRunner().invoke(app, ["augment", "sample", str(pipeline_dir), "--out", str(tmp_path / "p"),
                                      "--n-per-class", "1", "--steps", "2", "--grid-guidance", "1",
                                      "--grid-steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "unconditional" / "00000.png").exists() and (tmp_path / "p" / "grid.png").exists()
    bad = CliRunner().invoke(app, ["augment", "sample", str(diffusion_run), "--out", str(tmp_path / "x"),
                                   "--class", "eleven"])
    assert bad.exit_code == 2 and "eleven" in bad.output


def test_cli_sample_guards_its_folder_shows_progress_and_grids_only_when_asked(diffusion_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    args = ["augment", "sample", str(diffusion_run), "--n-per-class", "1", "--steps", "1", "--class", "three",
            "--device", "cpu"]
    bad = CliRunner().invoke(app, [*args, "--out", str(mine), "--overwrite"])
    assert bad.exit_code == 2 and "not a samples folder" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert (mine / "thesis.txt").read_text() == "mine"
    out = tmp_path / "s"
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "class 1/1 three: 1 images" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["samples.json", "three"]  # no grid unless asked
    again = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert CliRunner().invoke(app, [*args, "--out", str(out), "--overwrite"]).exit_code == 0
