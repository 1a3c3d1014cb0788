"""Training runs with pretrained towers from local files, LoRA, a locked tower and checkpointing."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from jointspace.evaluate.runner import evaluate_run
from jointspace.runs import load_run
from jointspace.tasks.contrastive import train


def test_train_openclip_image_and_hf_text_with_lora(tiny_cfg, tiny_clip_file, tiny_bert_dir, capsys):
    """LoRA + gradient checkpointing on both towers; only adapters and heads move; eval tokenizes with BERT's."""
    name, path, state = tiny_clip_file
    cfg = tiny_cfg(
        "eval.linear_probe=false",
        f"model.towers.image={{name: openclip_image, params: {{model: {name}, pretrained: {path}}}, "
        "lora: {r: 4, alpha: 8}, grad_checkpointing: true}",
        f"model.towers.text={{name: hf_text, params: {{path: {tiny_bert_dir[0]}}}, lora: {{r: 4}}, "
        "grad_checkpointing: true}",
        epochs=1,
    )
    run = train(cfg, show_progress=False)
    out = capsys.readouterr().out
    assert "trainable of" in out and "tower image:" in out
    weights = load_file(str(run / "model.safetensors"))
    # frozen base weights are saved unchanged; adapters were trained
    key = "towers.image.visual.transformer.resblocks.0.attn.out_proj.base_layer.weight"
    assert torch.equal(weights[key], state["visual.transformer.resblocks.0.attn.out_proj.weight"])
    assert weights["towers.image.visual.transformer.resblocks.0.attn.out_proj.lora_B.default.weight"].abs().sum() > 0
    assert weights["towers.text.model.encoder.layer.1.attention.output.dense.lora_B.default.weight"].abs().sum() > 0
    _, model, _ = load_run(run)  # rebuilds towers from the local files, adds adapters, loads the run's weights
    assert torch.equal(model.state_dict()[key], weights[key])
    result = evaluate_run(run)
    assert "zero_shot" in result and result["retrieval"]["text->image"]["R@1"] >= 0


def test_locked_image_tower_lit(tiny_cfg):
    """LiT: `freeze: true` keeps the image tower (and its BatchNorm statistics) exactly as initialised."""
    cfg = tiny_cfg("model.towers.image.freeze=true", "eval.linear_probe=false", epochs=1)
    run = train(cfg, show_progress=False)
    first = load_file(str(run / "checkpoints" / "epoch_0001" / "model.safetensors"))
    from jointspace.runs import build_from_info, read_run_info

    torch.manual_seed(cfg.seed)
    init = build_from_info(cfg, read_run_info(run)).state_dict()
    for k, v in first.items():
        if k.startswith("towers.image."):
            assert torch.equal(v, init[k]), k
    assert any(not torch.equal(v, init[k]) for k, v in first.items() if k.startswith("heads.image."))
