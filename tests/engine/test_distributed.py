"""Two CPU processes under torchrun (gloo) give the same gradients as one process on the full batch."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from jointspace.losses import BindingLoss, LossContext, positive_mask

pytestmark = pytest.mark.usefixtures("multiprocess_lock")  # several processes of its own: one such test at a time

WORKER = textwrap.dedent("""
    import sys, torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from safetensors.torch import save_file
    from jointspace.losses import BindingLoss, LossContext, positive_mask
    from jointspace.collectives import gather_no_grad
    from jointspace.engine.distributed import cleanup, init_distributed, shard_batch
    sys.path.insert(0, sys.argv[1])
    from common import make_model, make_batch

    info = init_distributed("cpu")


    def run_case(case):  # a function, so that its DDP (which holds the process group) is gone before cleanup
        kind, local, mode = case.split(",")
        model = make_model(kind)  # only the logit parameters the loss reads: DDP waits for every one's gradient
        ddp = DDP(model)
        x, y, labels = make_batch()
        idx = shard_batch(torch.arange(len(labels)), info)
        emb = ddp(x[idx], y[idx])
        glabels = gather_no_grad(labels[idx])
        mask = positive_mask({"label": glabels}, mode)
        loss_fn = BindingLoss([("a", "b")], kind, rank=info.rank, world_size=info.world_size, local_loss=local == "1")
        loss, _ = loss_fn(emb, mask, LossContext.from_logits(model.logits))
        loss.backward()
        if info.is_main:
            grads = {n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}
            save_file(grads, f"{sys.argv[1]}/{case.replace(',', '_')}.safetensors")


    for case in sys.argv[2:]:
        run_case(case)
    # No DDP is left, so cleanup destroys the process group and joins its gloo threads. A DDP kept as a global
    # until interpreter exit kept them running past cleanup: a thread freeing the last allreduce (which holds
    # the backward's Python context) then took the GIL of a finalizing interpreter, and the rank aborted now
    # and then ("terminate called without an active exception").
    cleanup(info)
""")

COMMON = textwrap.dedent("""
    import torch
    import torch.nn.functional as F

    import math
    from jointspace.losses import loss_class

    class Pair(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.fa = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
            self.fb = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
            self.logits = loss_class(kind).logit_parameters(init_temperature=math.exp(-2.0))  # the loss's own
            if self.logits.bias is not None:
                self.logits.bias.data.fill_(-1.0)

        def forward(self, x, y):
            return {"a": F.normalize(self.fa(x), dim=-1), "b": F.normalize(self.fb(y), dim=-1)}

    def make_model(kind):
        torch.manual_seed(0)
        return Pair(kind).double()

    def make_batch():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(12, 6, generator=g, dtype=torch.float64)
        y = torch.randn(12, 5, generator=g, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2, 0, 1, 3, 2, 0, 4, 1, 3, 0])  # positives straddle the two ranks
        return x, y, labels
""")


# torchrun picks its rendezvous and store ports as free ports and binds them a moment later; another
# process can take one in between. Only that failure is retried (once); any other failure stands.
PORT_RACE = ("EADDRINUSE", "Address already in use", "address already in use")


def run_torchrun(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and any(s in proc.stderr for s in PORT_RACE):
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    return proc


CASES = [("infonce", False, "label"), ("infonce", True, "label"), ("infonce", True, "instance"),
         ("siglip", False, "label"), ("triplet", False, "label")]


def test_two_process_gradients_match_single_process(tmp_path):
    (tmp_path / "common.py").write_text(COMMON)
    (tmp_path / "worker.py").write_text(WORKER)
    cases = [f"{k},{int(loc)},{m}" for k, loc, m in CASES]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(tmp_path / "worker.py"), str(tmp_path), *cases]
    proc = run_torchrun(cmd, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import common
    finally:
        sys.path.remove(str(tmp_path))
    for (kind, local, mode), case in zip(CASES, cases):
        ddp_grads = load_file(str(tmp_path / f"{case.replace(',', '_')}.safetensors"))
        model = common.make_model(kind)
        x, y, labels = common.make_batch()
        loss, _ = BindingLoss([("a", "b")], kind)(model(x, y), positive_mask({"label": labels}, mode),
                                                  LossContext.from_logits(model.logits))
        loss.backward()
        expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        # every parameter has a gradient: none exists that the loss does not read
        assert ddp_grads.keys() == expected.keys() == {n for n, _ in model.named_parameters()}
        assert ("logits.log_scale" in expected) == (kind != "triplet")
        for name, grad in expected.items():
            assert torch.allclose(ddp_grads[name], grad, atol=1e-5, rtol=1e-5), (case, name, ddp_grads[name] - grad)
    sys.modules.pop("common", None)


def torchrun_train(cfg, path) -> None:
    """`torchrun --nproc_per_node=2 -m jointspace.cli train` on `cfg`, written to `path`; it must succeed."""
    import yaml

    raw = cfg.model_dump(mode="json")
    raw["train"]["device"] = "cpu"  # gloo on the CPU, also on a machine with a GPU (or with one GPU)
    path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
           "--rdzv_endpoint=127.0.0.1:0", "-m", "jointspace.cli", "train", str(path)]
    proc = run_torchrun(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_training_matches_single_process(tiny_cfg, tmp_path):
    """`torchrun -m jointspace.cli train` on 2 CPU ranks ends at the weights of one process on the full batch."""

    extra = ("model.towers.image.params.norm=group", "model.towers.audio.params.norm=group",
             "model.towers.audio.params.dropout=0.0", "train.grad_clip=null", "train.device=cpu")
    single = tiny_cfg(*extra, name="single", epochs=1)
    from jointspace.tasks.contrastive import train

    train(single, show_progress=False)
    cfg = single.model_copy(update={"name": "ddp"})
    path = tmp_path / "ddp.yaml"
    torchrun_train(cfg, path)
    # Same loss at every step; weights equal but for the few elements whose gradient is ~0, where Adam's
    # normalisation (m / sqrt(v)) turns float-rounding differences into lr-sized steps.
    def losses(run):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [x["loss"] for x in lines if x["split"] == "train"]

    assert len(losses(cfg.run_dir)) == 3
    assert losses(cfg.run_dir) == pytest.approx(losses(single.run_dir), rel=1e-5)
    a = load_file(str(single.run_dir / "model.safetensors"))
    b = load_file(str(cfg.run_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a if a[k].is_floating_point()])
    assert (diffs > 1e-5).float().mean() < 1e-3 and diffs.max() < 3 * single.train.lr * 3, diffs.max()
    summary = (cfg.run_dir / "train_summary.json").read_text()
    assert '"world_size": 2' in summary


def test_torchrun_streaming_training_runs(tiny_cfg, tmp_path):
    """Streamed shards under 2 ranks: each rank reads its own shards, the run completes and logs once."""

    cfg = tiny_cfg("data.streaming=true", "data.shuffle_buffer=10", name="ddp_stream", epochs=2)
    path = tmp_path / "s.yaml"
    torchrun_train(cfg, path)
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [1, 2, 3, 4]  # 2 steps/epoch, rank 0 only
    assert (cfg.run_dir / "model.safetensors").exists()


def test_torchrun_streams_foreign_shards(tmp_path):
    """open_clip-layout shards (no dataset.json) streamed under 2 ranks: each rank reads its share."""

    from jointspace.config import load_config

    from ..data.test_webdataset import TINY, write_shards

    write_shards(tmp_path / "oc", 64, 8, "openclip")
    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=ddp_foreign",
                             f"data.urls={tmp_path / 'oc' / '{00000..00007}.tar'}", "data.streaming=true",
                             "data.shuffle_buffer=0", "train.epochs=1", *TINY])
    path = tmp_path / "f.yaml"
    torchrun_train(cfg, path)
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == list(range(1, 8))  # 32 per rank / 4, minus 1
    assert json.loads((cfg.run_dir / "run.json").read_text())["kinds"] == {"image": "image", "text": "text"}


def test_a_local_rank_without_a_gpu_is_one_clear_error(monkeypatch):
    """torchrun with more processes than GPUs: rank N names LOCAL_RANK and the GPUs there are."""
    from jointspace.engine.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(ValueError, match=rf"LOCAL_RANK {torch.cuda.device_count()} has no GPU: this machine has "
                                         rf"{torch.cuda.device_count()}"):
        init_distributed("cuda")


def _rank_pid(rank: int, run_id_of: int) -> int | None:
    """The pid of torchrun worker `rank` under the torchrun process `run_id_of` (from /proc)."""
    import os
    from pathlib import Path

    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == run_id_of:
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"jointspace.cli" in cmd and os.getppid() != int(d.name):
            return int(d.name)
    return None


def test_preemption_and_a_lost_rank_under_torchrun_end_at_the_uninterrupted_weights(tiny_cfg, tmp_path):
    """Under torchrun (2 CPU ranks): SIGTERM to rank 1 alone stops both ranks after the same step (they agree
    on log steps) with one checkpoint; then `torchrun --max-restarts 1 ... --resume` with rank 1 SIGKILLed
    mid-epoch restarts both ranks, they meet again (each attempt's store keys apart) and resume; the run ends
    with the weights of a run that lost nothing, every step logged once."""
    import os
    import signal
    import time

    import yaml

    extra = ("model.towers.image.params.norm=group", "model.towers.audio.params.norm=group", "train.device=cpu",
             "train.checkpoint_every_steps=2", "train.keep_checkpoints=3")
    straight = tiny_cfg(*extra, name="straight", epochs=4)
    torchrun_train(straight, tmp_path / "straight.yaml")
    cfg = straight.model_copy(update={"name": "lost"})
    (tmp_path / "lost.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    metrics = cfg.run_dir / "metrics.jsonl"

    def run_until(step: int, sig: int, restarts: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={restarts}",
               "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", "-m", "jointspace.cli", "train",
               str(tmp_path / "lost.yaml"), "--resume"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not (metrics.exists() and metrics.read_text().count('"train"') >= step):
            assert proc.poll() is None and time.time() < deadline, f"the job ended before step {step}"
            time.sleep(0.02)
        os.kill(_rank_pid(1, proc.pid), sig)
        return proc

    _, err = run_until(3, signal.SIGTERM, 0).communicate(timeout=300)
    stops = sorted({line.split(" at step ")[1].split(" ")[0] for line in err.splitlines() if "preempted:" in line})
    assert len(stops) == 1 and sum("preempted:" in line for line in err.splitlines()) == 2, err[-3000:]
    assert json.loads((cfg.run_dir / "checkpoints" / "latest.json").read_text())["name"] == f"step_{int(stops[0]):07d}"
    proc = run_until(int(stops[0]) + 2, signal.SIGKILL, 1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    a = load_file(str(straight.run_dir / "model.safetensors"))
    b = load_file(str(cfg.run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x]
    assert steps == list(range(1, 13))  # resumed from checkpoints: the steps after them logged once
