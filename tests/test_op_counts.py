"""Launch counts, measured on the CPU as dispatched torch ops: what AugSelf adds
to a training step (forward, backward and optimiser step).

Two measures. *Dispatched*: every aten op the dispatcher sees. *Launching*: the
ones that can launch a GPU kernel, i.e. all but views (t, view, slice, detach,
expand: metadata on the host, which autograd and F.linear emit freely), in-place
view ops (squeeze_) and uninitialised allocations (empty: the caching allocator,
no kernel). Launches are what an eager GPU step pays per op; the issue's target
(at most 40 added) is held on them.

AugSelf's rows run as one batched head (trainer/augself.py): one concatenation
builds the head input of both view orders, one product every target, the
block-diagonal masks cost no op in the forward pass, and its parameters share
the method's fused optimiser group (BN keeps its module forward, so that SyncBN
replaces it under DDP: its step counter is 2 of the ops). Measured on SimSiam, the small
backbone, the default crop and colour rows: 39 launching ops (90 dispatched);
one small head per row with its own parameter group and per-parameter SGD cost
254 dispatched, the first batched form 101 (52 launching). Compiled (--compile,
the whole objective) they become a few fused kernels, which a dispatch-mode
count cannot see.
"""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.batch import Batch
from pipelines.params import identity
from pipelines.recipe import preset
from trainer import optim
from trainer.build import build_objective
from trainer.config import from_argv

MAX_AUGSELF_LAUNCHES = 40


_NO_KERNEL = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default}


def launches(func) -> bool:
    """Whether an aten op can launch a kernel (see the module's docstring)."""
    return not (func.is_view or torch.Tag.inplace_view in func.tags or func in _NO_KERNEL)


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[(str(func), launches(func))] += 1
        return func(*args, **(kwargs or {}))


def _step_ops(aux: str) -> Counter:
    cfg = from_argv(["--data", "-", "--out", "-", "--method", "simsiam", "--aux", aux,
                     "--backbone", "small", "--size", "32", "--no-probe"])
    objective = build_objective(cfg, preset("augself", 32), 0)
    opt = optim.build(objective.param_groups(), "sgd", 0.1, 0.9, 5e-4)
    g = torch.Generator().manual_seed(0)
    params = {k: v + 0.1 * torch.rand(v.shape, generator=g) for k, v in identity(8, 2).items()}
    batch = Batch([torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)], params,
                  torch.zeros(8, dtype=torch.long), torch.arange(8))

    def step():
        out = objective(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    step()  # lazy state (momentum buffers) out of the count
    count = _Count()
    with count:
        step()
    return count.ops


def test_augself_adds_few_launches_per_step():
    base, aug = _step_ops("none"), _step_ops("augself")
    added = aug - base
    assert not base - aug  # AugSelf only adds
    launching = sum(n for (_, k), n in added.items() if k)
    print(f"AugSelf adds {launching} launching ops, {sum(added.values())} dispatched")
    assert 0 < launching <= MAX_AUGSELF_LAUNCHES, added.most_common(20)
