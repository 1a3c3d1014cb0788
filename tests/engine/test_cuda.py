"""What only a GPU shows: AMP steps, fused AdamW, retrieval on the device, pinned non-blocking batches, and
a bf16 training step that reads nothing back. Skipped without CUDA; bench/gpu_check.sh runs them
(`pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_on_the_gpu_is_finite_and_exactly_resumable(tiny_cfg, amp):
    import json

    from jointspace.tasks.contrastive import train

    cfg = tiny_cfg(f"train.amp={amp}", "train.device=cuda", name=f"cuda-{amp}", epochs=2)
    run = train(cfg, show_progress=False)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


def test_bf16_steps_read_nothing_back_on_the_gpu(tiny_cfg, counted):
    from jointspace.tasks.contrastive import train

    train(tiny_cfg("train.amp=bf16", "train.device=cuda", "train.log_every=3", name="cuda-sync", epochs=1),
          show_progress=False)
    assert counted == [[], [], []]


def test_fused_adamw_is_used_on_the_gpu():
    from jointspace.config import TrainConfig
    from jointspace.engine.optim import build_optimizer

    opt = build_optimizer(torch.nn.Linear(4, 4).cuda(), TrainConfig())
    assert opt.defaults.get("fused") is True


def test_retrieval_metrics_on_the_gpu_equal_the_cpus():
    from jointspace.evaluate.retrieval import retrieval_metrics

    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(700, 32, generator=gen), dim=1)
    g = torch.nn.functional.normalize(q + 0.5 * torch.randn(700, 32, generator=gen), dim=1)
    labels = torch.randint(0, 20, (700,), generator=gen)
    on_cpu = retrieval_metrics(q, g, labels, labels)
    on_gpu = retrieval_metrics(q.cuda(), g.cuda(), labels.cuda(), labels.cuda())
    assert on_gpu.keys() == on_cpu.keys()
    for k, v in on_cpu.items():
        assert on_gpu[k] == pytest.approx(v, abs=1e-4), k


def test_batches_go_over_pinned_and_non_blocking():
    from jointspace.tasks.batches import one_ahead, to_device

    host = torch.arange(12).reshape(3, 4)
    moved = to_device(host, torch.device("cuda"))
    assert moved.is_cuda and torch.equal(moved.cpu(), host)
    drawn = []
    items = one_ahead(drawn.append(i) or i for i in range(3))
    assert next(items) == 0 and drawn == [0, 1]  # the next step's batch is prepared before this one runs
