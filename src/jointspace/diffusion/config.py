"""Typed config of `jointspace augment`: diffusion model, its training, sampling and the fix loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator

from jointspace.config import RunFolder, _Strict, apply_overrides, read_yaml, validate_config
from jointspace.errors import UsageError


class DiffusionDataConfig(_Strict):
    path: str = "data/digits"  # shard folder whose images are learned
    split: str = "train"
    modality: str = "image"
    image_size: int = Field(16, ge=8)  # digits' 8x8 are upscaled to this; shapes: 32-64
    channels: int | None = Field(None, ge=1, le=4)  # default: the images' own (1 grey, 3 RGB)
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)


class UNetConfig(_Strict):
    """A diffusers UNet2DModel: one down block per entry of `channels`; attention in the middle block."""

    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    layers_per_block: int = Field(1, ge=1)
    attention: bool = True  # self-attention in the middle block
    attention_blocks: int = Field(0, ge=0)  # the deepest this many down/up blocks get attention too
    norm_groups: int = Field(8, ge=1)

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise UsageError("channels must be positive")
        return v


class DiffusionTrainConfig(_Strict):
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = 1.0
    timesteps: int = Field(1000, ge=2)  # DDPM noise levels
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    label_dropout: float = Field(0.1, ge=0.0, le=1.0)  # share of labels replaced by the null class (CFG)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # the saved model is this EMA of the weights (0: off)
    hflip: bool = False  # random horizontal flips (not for digits)
    device: str = "cpu"
    num_threads: int | None = Field(None, ge=1)
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)  # steps
    keep_checkpoints: int = Field(2, ge=1)


class SampleConfig(_Strict):
    n_per_class: int = Field(16, ge=1)
    guidance: float = Field(2.0, ge=0.0)  # 0: unconditional, 1: conditional, >1: classifier-free guidance
    steps: int = Field(50, ge=1)
    scheduler: Literal["ddpm", "ddim"] = "ddim"
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    grid_guidance: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0])
    grid_steps: list[int] = Field(default_factory=lambda: [10, 25, 50])


class FixConfig(_Strict):
    """`augment fix RUN`: target the classes with the lowest validation recall, add generated images."""

    worst: int = Field(1, ge=1)  # classes to target
    classes: list[str] = Field(default_factory=list)  # target these instead (class names)
    n_per_class: int = Field(200, ge=1)  # generated images per targeted class
    upsample: float = Field(1.0, gt=0.0)  # weight of the generated source (data.sources weight)
    oversample_control: bool = True  # also retrain with the real images of the targets upsampled alike
    retrain_set: list[str] = Field(default_factory=list)  # extra overrides for the retrained runs
    # text-to-image pipelines (--diffusion): prompts from the class name and its most confused captions
    prompts: list[str] = Field(default_factory=lambda: ["a photo of a {}"])  # templates, {} = the class name
    confused_captions: int = Field(3, ge=0)  # + the class's captions the run places nearest the confused class
    negative_prompt: str | None = None
    strength: float | None = Field(None, gt=0.0, le=1.0)  # image-to-image from the class's real train images
    filter: bool = False  # keep only images the run's joint space places nearer their class than the confused one


class AugmentConfig(RunFolder):
    task: Literal["diffusion"] = "diffusion"
    tracker: Literal["tensorboard", "wandb", "none"] = "none"
    name: str = "diffusion"
    data: DiffusionDataConfig = Field(default_factory=DiffusionDataConfig)
    model: UNetConfig = Field(default_factory=UNetConfig)
    train: DiffusionTrainConfig = Field(default_factory=DiffusionTrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    fix: FixConfig = Field(default_factory=FixConfig)


def load_augment_config(path: str | Path | None, overrides: list[str] | None = None) -> AugmentConfig:
    """Load an augment YAML (or defaults when `path` is None) with `a.b=value` overrides; errors name fields."""
    raw = {} if path is None else read_yaml(path)
    raw = apply_overrides(raw, overrides or [])
    return validate_config(AugmentConfig, raw, "<defaults>" if path is None else str(path))


def save_augment_config(cfg: AugmentConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
