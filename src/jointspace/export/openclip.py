"""Export to open_clip: a run whose picture and caption towers are open_clip towers of one architecture
becomes an open_clip checkpoint. LoRA adapters are merged; each linear head is folded into open_clip's
projection (visual.proj @ W^T, text_projection @ W^T), so open_clip's features are jointspace's."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from jointspace.errors import UsageError
from jointspace.kinds import with_role
from jointspace.model import tower_config
from jointspace.runs import run_prep
from jointspace.towers.heads import NoHead
from jointspace.towers.lora import merge_lora

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
_CLASSIC_TEXT = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def _fold(head: nn.Module, where: str) -> torch.Tensor:
    """The head's weight W [embed, width]: only a bias-free linear head (or none) folds into a projection."""
    if isinstance(head, NoHead):
        return torch.eye(head.dim)
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise UsageError(f"{where}: head {type(head).__name__} cannot be folded into open_clip's "
                         "projection (only model.head.type: linear can); use --format hf or onnx")
    return head.weight.detach()


def _projected(proj, weight: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(proj, torch.Tensor) or proj.dim() != 2:
        raise UsageError(f"{where}: this open_clip tower has no projection matrix to fold the head into "
                         "(timm or attention-pooled towers are not supported); use --format hf or onnx")
    return proj.detach() @ weight.T


def _towers(job) -> tuple[str, str, str]:
    """(picture modality, caption modality, open_clip architecture), or a ValueError saying why not."""
    kinds = job.info.kinds
    image, text = with_role(kinds, "picture"), with_role(kinds, "captions")
    if image is None or text is None:
        raise UsageError(f"{job.run_dir}: --format open_clip needs a picture and a caption modality "
                         f"(this run has {', '.join(kinds)})")
    prep = run_prep(job.cfg, job.info)
    cfgs = {m: tower_config(job.cfg.model, m, kinds[m], prep) for m in (image, text)}
    wanted = {image: "openclip_image", text: "openclip_text"}
    for m, name in wanted.items():
        if cfgs[m].name != name:
            raise UsageError(f"{job.run_dir}: model.towers.{m} is {cfgs[m].name!r}; --format open_clip needs "
                             f"{name} towers (use --format hf or onnx for any tower)")
    archs = {str(cfgs[m].params.get("model", "ViT-B-32")) for m in wanted}
    if len(archs) != 1:
        raise UsageError(f"{job.run_dir}: the image and text towers are different open_clip architectures "
                         f"({', '.join(sorted(archs))}); one open_clip checkpoint holds one")
    return image, text, archs.pop()


def _state(job, image: str, text: str, classic: bool) -> dict[str, torch.Tensor]:
    """open_clip's state dict: merged towers, heads folded in, the run's logit scale."""
    model = job.model
    visual = merge_lora(copy.deepcopy(model.towers[image])).visual
    txt = merge_lora(copy.deepcopy(model.towers[text])).text
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state["visual.proj"] = _projected(visual.proj, _fold(model.heads[image], f"heads.{image}"), f"towers.{image}")
    text_state = txt.state_dict()
    proj = txt.text_projection
    w = _fold(model.heads[text], f"heads.{text}")
    if isinstance(proj, nn.Linear):  # text towers with a linear projection: W (A x + b)
        text_state["text_projection.weight"] = w @ proj.weight.detach()
        if proj.bias is not None:
            text_state["text_projection.bias"] = w @ proj.bias.detach()
    else:
        text_state["text_projection"] = _projected(proj, w, f"towers.{text}")
    for k, v in text_state.items():
        state[k if classic and k.startswith(_CLASSIC_TEXT) else f"text.{k}"] = v
    state["logit_scale"] = model.logits.clamped().detach().reshape(())  # as used
    return {k: v.contiguous().clone() for k, v in state.items()}


def _model_cfg(arch: str, job, image: str) -> tuple[dict, bool]:
    """open_clip's config of `arch` with the run's embed_dim (and QuickGELU where the tower has it), and
    whether that embed_dim is the architecture's own (then `arch` + the file load it by name)."""
    import open_clip

    base = open_clip.get_model_config(arch)
    if base is None:
        raise UsageError(f"open_clip has no config for architecture {arch!r}")
    cfg = copy.deepcopy(base)
    cfg["embed_dim"] = int(job.model.embed_dim)
    if any(isinstance(m, open_clip.transformer.QuickGELU) for m in job.model.towers[image].modules()):
        cfg["quick_gelu"] = True
    return cfg, cfg["embed_dim"] == base.get("embed_dim")


def _check(out: Path, job, image: str, text: str) -> float:
    """Load the export with open_clip and compare its features with the run's: the largest difference."""
    import open_clip

    clip = open_clip.create_model(f"local-dir:{out}").eval()
    tower = job.model.towers[image]
    torch.manual_seed(0)
    x = torch.rand(2, 3, *tower.image_size) * 2 - 1
    ids = torch.randint(1, 400, (2, clip.context_length))
    ids[:, 5] = 49407  # an end-of-text token (the largest id)
    ids[:, 6:] = 0
    with torch.no_grad():
        ours_i = job.model.encode(image, {image: x})
        ours_t = job.model.encode(text, {text: ids})
        theirs_i = F.normalize(clip.encode_image(((x + 1) / 2 - tower.mean) / tower.std), dim=-1)
        theirs_t = F.normalize(clip.encode_text(ids), dim=-1)
    return float(max((ours_i - theirs_i).abs().max(), (ours_t - theirs_t).abs().max()))


def export_openclip(job, out: Path) -> dict:
    """Write open_clip_config.json and open_clip_model.safetensors; returns the manifest's fields."""
    image, text, arch = _towers(job)
    model_cfg, same_dim = _model_cfg(arch, job, image)
    classic = not (model_cfg.get("custom_text") or model_cfg.get("text_cfg", {}).get("hf_model_name"))
    tower = job.model.towers[image]
    preprocess = {"size": list(tower.image_size), "mean": tower.mean.flatten().tolist(),
                  "std": tower.std.flatten().tolist(), "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess,
                                          "jointspace": job.stamp()}, indent=2))
    save_file(_state(job, image, text, classic), str(out / WEIGHTS), metadata=job.stamp())
    diff = _check(out, job, image, text)
    if diff > 1e-4:
        raise RuntimeError(f"open_clip's features of the export differ from the run's by {diff:.2e}")
    left_out = [m for m in job.model.towers if m not in (image, text)]
    return {"architecture": arch, "modalities": {"image": image, "text": text}, "left_out": left_out,
            "files": [CONFIG, WEIGHTS], "max_abs_diff": diff, "arch_loads_file": same_dim,
            "load": (f"open_clip.create_model_and_transforms('{arch}', pretrained='DIR/{WEIGHTS}')"
                     if same_dim else "open_clip.create_model_and_transforms('local-dir:DIR')")}
