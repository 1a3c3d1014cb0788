"""Seeded sampling: a trained class-conditional UNet with classifier-free guidance, or any local diffusers
pipeline folder; PNGs per class and a grid over guidance x steps."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jointspace.diffusion.model import load_diffusion, make_scheduler
from jointspace.errors import UsageError, require
from jointspace.outputs import OutputType, json_with
from jointspace.run_dir import RUN_INFO, RunDir
from jointspace.runs import resolve_device

GRID_STREAM = 2**31 - 1  # the noise stream of grid panels (not a class id)


def _generator(seed: int, class_id: int, chunk: int) -> torch.Generator:
    """Each (seed, class, chunk) draws its own noise: a class's images do not depend on the other classes asked."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, class_id, chunk]).generate_state(1)[0]))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> uint8 [N, H, W] (one channel) or [N, H, W, C]."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


class ClassSampler:
    """Class-conditional sampling from an `augment train` run; class id `null_class` is unconditional."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, class_names: list[str], null_class: int,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval()
        self.scheduler_config = scheduler_config
        self.class_names = list(class_names)
        self.null_class = null_class
        self.shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> ClassSampler:
        _cfg, unet, info = load_diffusion(run_dir)
        return cls(unet, info.part["scheduler"], info.class_names, info.part["null_class"], resolve_device(device))

    @torch.no_grad()
    def _eps(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance: float) -> torch.Tensor:
        """Noise prediction with classifier-free guidance: eps_u + g (eps_c - eps_u)."""
        if guidance == 1.0:
            return self.unet(x, t, class_labels=labels).sample
        null = torch.full_like(labels, self.null_class)
        if guidance == 0.0:
            return self.unet(x, t, class_labels=null).sample
        eps_c, eps_u = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    @torch.no_grad()
    def denoise(self, labels: list[int], guidance: float, steps: int, scheduler: str,
                gen: torch.Generator) -> np.ndarray:
        """uint8 images of the given class ids, one batch, all noise drawn from `gen`."""
        sched = make_scheduler(scheduler, self.scheduler_config)
        sched.set_timesteps(steps)
        x = (torch.randn((len(labels), *self.shape), generator=gen) * sched.init_noise_sigma).to(self.device)
        y = torch.tensor(labels, dtype=torch.long, device=self.device)
        draws = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
        for t in sched.timesteps:
            eps = self._eps(sched.scale_model_input(x, t), t.to(self.device), y, guidance)
            x = sched.step(eps.cpu(), t, x.cpu(), **draws).prev_sample.to(self.device)
        return to_uint8(x)

    def sample_class(self, class_id: int, n: int, guidance: float = 2.0, steps: int = 50, scheduler: str = "ddim",
                     seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """`n` uint8 images of one class; the same arguments give the same images."""
        if not 0 <= class_id < len(self.class_names):
            raise UsageError(f"class id {class_id} out of range (model has {len(self.class_names)} classes)")
        return np.concatenate([self.denoise([class_id] * min(batch_size, n - start), guidance, steps, scheduler,
                                            _generator(seed, class_id, chunk))
                               for chunk, start in enumerate(range(0, n, batch_size))])


def _load_pipeline(path: str | Path):
    """A diffusers pipeline from a local folder, or by hub id through huggingface_hub's cache (downloaded
    where the machine is online; HF_HUB_OFFLINE=1 reads the cache only)."""
    import os

    from diffusers import DiffusionPipeline

    local = Path(path).expanduser()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        return DiffusionPipeline.from_pretrained(str(local) if local.is_dir() else str(path),
                                                 local_files_only=local.is_dir() or offline)
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise UsageError(f"{path}: not a loadable diffusers pipeline folder: {err}") from None
        hint = ("offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache: download it on a connected "
                f"machine with `HF_HUB_OFFLINE=0 python -c \"import diffusers; diffusers.DiffusionPipeline."
                f"from_pretrained('{path}')\"`") if offline else f"could not be downloaded ({err})"
        raise UsageError(f"diffusers pipeline {str(path)!r}: {hint}") from None


class PipelineSampler:
    """A diffusers pipeline (a local `save_pretrained` folder or a hub id, e.g. Stable Diffusion weights).

    Text-to-image pipelines get prompts per class (`prompt_templates`, cycled over the images; `{}` is the
    class name) and a negative prompt; with `init_images` ({class id: uint8 images}) and `strength` they run
    as image-to-image from those real images. Class-label pipelines (DiT) get the class id, unconditional
    pipelines (DDPM) the same unconditioned images for every class."""

    def __init__(self, path: str | Path, class_names: Sequence[str] | None = None, device: str = "auto",
                 prompt_template: str | Sequence[str] = "a photo of {}", negative_prompt: str | None = None,
                 init_images: dict[int, np.ndarray] | None = None, strength: float = 0.6):
        self.pipe = _load_pipeline(path)
        self.device = resolve_device(device)
        self.pipe.to(self.device)
        params = inspect.signature(self.pipe.__call__).parameters
        self.mode = "prompt" if "prompt" in params else "class_labels" if "class_labels" in params else "unconditional"
        self.class_names = list(class_names or (["unconditional"] if self.mode == "unconditional" else []))
        if not self.class_names:
            raise UsageError(f"{path}: a {self.mode} pipeline needs class names (--class)")
        templates = [prompt_template] if isinstance(prompt_template, str) else list(prompt_template)
        self.prompt_templates, self.negative_prompt = templates or ["a photo of {}"], negative_prompt
        self.init_images, self.strength = init_images, strength
        self.class_prompts: dict[int, list[str]] = {}  # whole prompts of a class, instead of the templates
        if init_images is not None:
            if self.mode != "prompt":
                raise UsageError(f"{path}: image-to-image (--strength) needs a text-to-image pipeline")
            from diffusers import AutoPipelineForImage2Image

            self.pipe = AutoPipelineForImage2Image.from_pipe(self.pipe)
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self._base_scheduler = self.pipe.scheduler.config

    def _prompted(self, class_id: int, start: int, m: int, guidance: float) -> dict:
        name = self.class_names[class_id]
        own = self.class_prompts.get(class_id) or [t.format(name) for t in self.prompt_templates]
        kw = {"prompt": [own[(start + i) % len(own)] for i in range(m)], "guidance_scale": guidance}
        if self.negative_prompt:
            kw["negative_prompt"] = [self.negative_prompt] * m
        if self.init_images is not None:
            from PIL import Image

            real = self.init_images.get(class_id)
            if real is None or not len(real):
                raise UsageError(f"image-to-image: no real images of class {name!r} in --data")
            kw["image"] = [Image.fromarray(real[(start + i) % len(real)]).convert("RGB") for i in range(m)]
            kw["strength"] = self.strength
        return kw

    def sample_class(self, class_id: int, n: int, guidance: float = 2.0, steps: int = 50, scheduler: str = "ddim",
                     seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """`n` uint8 images of one class from the pipeline; the same arguments give the same images."""
        self.pipe.scheduler = make_scheduler(scheduler, self._base_scheduler)
        out = []
        for chunk, start in enumerate(range(0, n, batch_size)):
            m = min(batch_size, n - start)
            kw: dict = {"generator": _generator(seed, class_id, chunk), "num_inference_steps": steps,
                        "output_type": "np"}
            if self.mode == "prompt":
                kw.update(self._prompted(class_id, start, m, guidance))
            elif self.mode == "class_labels":
                kw.update(class_labels=[class_id] * m, guidance_scale=guidance)
            else:
                kw.update(batch_size=m)
            images = np.asarray(self.pipe(**kw).images)  # [m, H, W, C] floats in [0, 1]
            out.append(np.round(np.clip(images, 0, 1) * 255).astype(np.uint8))
        arr = np.concatenate(out)
        return arr[..., 0] if arr.shape[-1] == 1 else arr


def load_sampler(path: str | Path, device: str = "auto", class_names: Sequence[str] | None = None,
                 prompt_template: str | Sequence[str] = "a photo of {}", negative_prompt: str | None = None,
                 init_images: dict[int, np.ndarray] | None = None,
                 strength: float = 0.6) -> ClassSampler | PipelineSampler:
    """An `augment train` run folder, a local diffusers pipeline folder (model_index.json) or a hub id."""
    require("augment", "diffusers", "sampling a diffusion model")
    local = Path(path)
    if RunDir(local).has_info():
        if init_images is not None or negative_prompt:
            raise UsageError(f"{path}: prompts and image-to-image need a text-to-image pipeline, not a class UNet")
        return ClassSampler.from_run(local, device)
    if (local / "model_index.json").exists() or (not local.exists() and "/" in str(path)):
        return PipelineSampler(path, class_names, device, prompt_template, negative_prompt, init_images, strength)
    raise FileNotFoundError(f"{path}: neither an augment run ({RUN_INFO}), a diffusers pipeline folder "
                            "(model_index.json) nor a hub id (org/name)")


def real_images(shards: str | Path, class_names: Sequence[str], split: str = "train",
                per_class: int = 16) -> dict[int, np.ndarray]:
    """Up to `per_class` real uint8 images of each named class from a shard folder (img2img's starts)."""
    from jointspace.data.dataset import load_split
    from jointspace.data.shards import read_info
    from jointspace.kinds import with_role

    picture = with_role(read_info(shards)["modalities"], "picture")
    if picture is None:
        raise UsageError(f"{shards}: no image modality to start image-to-image from")
    data = load_split(shards, split, [picture], keep_raw=True)
    out: dict[int, list] = {}
    for raw, label in zip(data.raw[picture], data.labels.tolist()):
        name = data.class_names[label] if label < len(data.class_names) else str(label)
        if name in class_names and len(out.setdefault(class_names.index(name), [])) < per_class:
            out[class_names.index(name)].append(np.asarray(raw, np.uint8))
    return {c: np.stack(v) for c, v in out.items()}


def class_ids(sampler: ClassSampler | PipelineSampler, names: Sequence[str] | None) -> list[int]:
    """Indices of the named classes (all when `names` is empty); unknown names fail naming them."""
    if not names:
        return list(range(len(sampler.class_names)))
    unknown = [n for n in names if n not in sampler.class_names]
    if unknown:
        raise UsageError(f"classes {unknown} unknown to the model (has: {', '.join(sampler.class_names)})")
    return [sampler.class_names.index(n) for n in names]


SAMPLES_FOLDER = OutputType("samples folder", (("samples.json",),), json_with("samples.json", "n_images"))


def write_samples(out: Path, images: dict[int, np.ndarray], class_names: Sequence[str], settings: dict) -> int:
    """PNGs `out/<class>/<i>.png` and `out/samples.json`; returns the number of images."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for c, arr in images.items():
        folder = out / class_names[c]
        folder.mkdir(exist_ok=True)
        for i, img in enumerate(arr):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
            n += 1
    (out / "samples.json").write_text(json.dumps({**settings, "classes": [class_names[c] for c in images],
                                                  "n_images": n}, indent=2))
    return n


def settings_grid(sampler: ClassSampler | PipelineSampler, classes: list[int], guidances: Sequence[float],
                  steps: Sequence[int], scheduler: str, seed: int, path: Path, n_per_class: int = 2) -> Path:
    """A PNG with one panel per (guidance, steps): `n_per_class` images of each class, same seed everywhere."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(guidances), len(steps), squeeze=False,
                             figsize=(1.0 + 0.45 * len(classes) * len(steps), 0.6 + 0.5 * n_per_class * len(guidances)))
    for i, g in enumerate(guidances):
        for j, s in enumerate(steps):
            if isinstance(sampler, ClassSampler):  # every class in one batch, the same noise in every panel
                flat = sampler.denoise([c for c in classes for _ in range(n_per_class)], g, s, scheduler,
                                       _generator(seed, GRID_STREAM, 0))
                rows = [flat[k * n_per_class:(k + 1) * n_per_class] for k in range(len(classes))]
            else:
                rows = [sampler.sample_class(c, n_per_class, g, s, scheduler, seed) for c in classes]
            panel = np.concatenate([np.concatenate(list(r), axis=0) for r in rows], axis=1)  # classes side by side
            ax = axes[i][j]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"guidance {g:g}, {s} steps", fontsize=8)
    fig.suptitle(f"{scheduler}, seed {seed}; columns: {', '.join(sampler.class_names[c] for c in classes)}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
