"""The class-conditional diffusion model (diffusers UNet2DModel), its noise schedulers and its run folder."""

from __future__ import annotations

from pathlib import Path

import torch

from jointspace.data.dataset import SplitData, load_split
from jointspace.diffusion.config import AugmentConfig, DiffusionDataConfig, UNetConfig, load_augment_config
from jointspace.errors import UsageError
from jointspace.kinds import Prep, get_kind
from jointspace.run_dir import RUN_INFO, RunDir, RunInfo

# scheduler name -> diffusers class; every one takes any trained DDPM-style schedule config
SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "euler-a": "EulerAncestralDiscreteScheduler", "dpm++": "DPMSolverMultistepScheduler",
              "unipc": "UniPCMultistepScheduler"}


def unet_kwargs(cfg: UNetConfig, image_size: int, channels: int, n_classes: int) -> dict:
    """UNet2DModel constructor arguments; class id `n_classes` is the null (unconditional) class."""
    n = len(cfg.channels)
    attn = [i >= n - cfg.attention_blocks for i in range(n)]
    return {
        "sample_size": image_size, "in_channels": channels, "out_channels": channels,
        "block_out_channels": list(cfg.channels), "layers_per_block": cfg.layers_per_block,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "add_attention": cfg.attention, "norm_num_groups": cfg.norm_groups,
        "attention_head_dim": 8, "num_class_embeds": n_classes + 1, "class_embed_type": None,
    }


def build_unet(kwargs: dict):
    """A UNet2DModel from `unet_kwargs` output (norm groups must divide every width)."""
    from diffusers import UNet2DModel

    bad = [c for c in kwargs["block_out_channels"] if c % kwargs["norm_num_groups"]]
    if bad:
        raise UsageError(f"model.channels {bad} are not multiples of model.norm_groups={kwargs['norm_num_groups']}")
    return UNet2DModel(**kwargs)


def scheduler_config(timesteps: int, beta_schedule: str) -> dict:
    """The noise schedule shared by training (DDPM) and sampling (DDPM or DDIM)."""
    return {"num_train_timesteps": timesteps, "beta_schedule": beta_schedule, "clip_sample": True,
            "prediction_type": "epsilon"}


def make_scheduler(kind: str, config: dict):
    """A diffusers scheduler (ddpm, ddim, euler, euler-a, dpm++, unipc) over the given schedule config."""
    import diffusers

    if kind not in SCHEDULERS:
        raise UsageError(f"scheduler {kind!r}: choose from {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[kind]).from_config(config)


def load_images(cfg: DiffusionDataConfig) -> SplitData:
    """The split's images as [N, C, S, S] in [-1, 1] (C forced to `cfg.channels` when set) with labels."""
    data = load_split(cfg.path, cfg.split, [cfg.modality], Prep(image_size=cfg.image_size),
                      max_bad_fraction=cfg.max_bad_fraction)
    if not get_kind(data.kinds[cfg.modality]).picture:
        raise UsageError(f"data.modality={cfg.modality!r} of {cfg.path} is a {data.kinds[cfg.modality]}, not an image")
    x = data.inputs[cfg.modality] = get_kind(data.kinds[cfg.modality]).on_device(data.inputs[cfg.modality])
    if cfg.channels and cfg.channels != x.shape[1]:
        x = x.mean(1, keepdim=True) if cfg.channels == 1 else x[:, :1].expand(-1, cfg.channels, -1, -1)
        data.inputs[cfg.modality] = x.contiguous()
    return data


def load_diffusion(run_dir: str | Path) -> tuple[AugmentConfig, torch.nn.Module, RunInfo]:
    """Config, trained UNet (eval mode) and run info of a finished `augment train` run."""
    from safetensors.torch import load_file

    run = RunDir(run_dir)
    if not run.has_info():
        raise FileNotFoundError(f"{run_dir}: not an augment run (no {RUN_INFO}); train one with `jointspace augment train`")
    info = run.read_info()
    if "unet" not in info.part:  # what a diffusion run records of its model
        raise UsageError(f"{run_dir}: a {info.task!r} run, not a diffusion model")
    weights = run.weights
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no weights; has `augment train` finished?")
    unet = build_unet(info.part["unet"])
    unet.load_state_dict(load_file(str(weights)))
    return load_augment_config(run.config), unet.eval(), info
