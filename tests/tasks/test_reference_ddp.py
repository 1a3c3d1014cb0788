"""Guide exclusions and the distillation term under torchrun (2 CPU processes, gloo): the same gradients
as one process on the whole batch, for the pair loss over the gathered batch and with `local_loss`."""

import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from jointspace.losses import BindingLoss, LossContext, guide_exclusions
from jointspace.tasks.reference_terms import BoundLoss

pytestmark = pytest.mark.usefixtures("multiprocess_lock")  # several processes of its own: one such test at a time

COMMON = textwrap.dedent("""
    import torch
    import torch.nn.functional as F

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fa = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
            self.fb = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
            self.log_scale = torch.nn.Parameter(torch.tensor(2.0))

        def scale(self):
            return self.log_scale.exp()

        def forward(self, x, y):
            return {"a": F.normalize(self.fa(x), dim=-1), "b": F.normalize(self.fb(y), dim=-1)}

    def make():
        torch.manual_seed(0)
        model = Pair().double()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(12, 6, generator=g, dtype=torch.float64)
        y = torch.randn(12, 5, generator=g, dtype=torch.float64)
        # the reference's embeddings of the global batch (4-d: another space than the student's)
        teacher = {m: F.normalize(torch.randn(12, 4, generator=g, dtype=torch.float64), dim=-1) for m in "ab"}
        return model, x, y, teacher
""")

WORKER = textwrap.dedent("""
    import sys, torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from safetensors.torch import save_file
    from jointspace.losses import BindingLoss, LossContext, guide_exclusions
    from jointspace.engine.distributed import cleanup, init_distributed, shard_batch
    from jointspace.tasks.reference_terms import BoundLoss
    sys.path.insert(0, sys.argv[1])
    from common import make

    info = init_distributed("cpu")
    for local in ("0", "1"):
        model, x, y, teacher = make()
        ddp = DDP(model)
        idx = shard_batch(torch.arange(12), info)
        emb = ddp(x[idx], y[idx])
        fn = BindingLoss([("a", "b")], "infonce", rank=info.rank, world_size=info.world_size, local_loss=local == "1")
        excluded = {("a", "b"): guide_exclusions(teacher["a"] @ teacher["b"].T, None, 0.1)}
        loss, _ = BoundLoss(fn, excluded, teacher, 20.0, 0.5)(emb, None, LossContext(model.scale()))
        loss.backward()
        if info.is_main:
            save_file({n: p.grad.contiguous() for n, p in model.named_parameters()}, f"{sys.argv[1]}/{local}.safetensors")
    cleanup(info)
""")


def test_guide_and_distill_gradients_under_torchrun_match_one_process(tmp_path):
    (tmp_path / "common.py").write_text(COMMON)
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
           "--rdzv_endpoint=127.0.0.1:0", str(tmp_path / "worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0 and "ddress already in use" in proc.stderr:  # torchrun's free-port race: once more
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import common
    finally:
        sys.path.remove(str(tmp_path))
    model, x, y, teacher = common.make()
    excluded = {("a", "b"): guide_exclusions(teacher["a"] @ teacher["b"].T, None, 0.1)}
    assert excluded[("a", "b")].ab.any()  # the guide leaves some candidates out
    loss, parts = BoundLoss(BindingLoss([("a", "b")], "infonce"), excluded, teacher, 20.0, 0.5)(
        model(x, y), None, LossContext(model.scale()))
    assert float(parts["distill"]) > 0
    loss.backward()
    for local in ("0", "1"):
        ddp_grads = load_file(str(tmp_path / f"{local}.safetensors"))
        for name, p in model.named_parameters():
            torch.testing.assert_close(ddp_grads[name], p.grad, atol=1e-6, rtol=1e-6, msg=f"local={local} {name}")
    sys.modules.pop("common", None)
