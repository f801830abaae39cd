"""No blocking device-to-host read in the default training step (issue 21).

A read of a device value on the host (``.item()``, ``bool(t)``, ``.tolist()``,
``nonzero``) waits for every kernel queued before it: the host stops queueing
ahead, and on a small model the GPU then idles between steps. Counted here on the
CPU, as dispatched aten ops and as tensor methods, for every method and
auxiliary head, with the finiteness check on (the default): the skip of a
non-finite step is applied on the device (trainer/step.py) and the loop reads
its counters only when it logs a line. Before that change the dispatched count
was 1 per step (the finiteness flag's ``.item()``), 3 with SimCLR or EquiMod
(their NT-Xent's ``one_hot`` checked its classes with two reads on a CPU).
"""

from collections import Counter

import pytest
import stepkit
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.config import Config
from trainer.step import Tally, train_step

# The aten ops by which a value reaches the host: _local_scalar_dense is what
# .item(), bool(t), float(t) and int(t) end in; nonzero's size is data-dependent;
# equal answers a Python bool.
READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default",
         "aten.nonzero.default", "aten.equal.default"}
# Tensor methods that bring values to the host but dispatch nothing on a CPU
# tensor (``tolist`` and ``numpy`` read memory the CPU already has; ``cpu()`` and
# ``to("cpu")`` return it as it is): on a GPU each is a blocking copy. Seen one
# level up, as torch functions. ``to`` counts when it names "cpu" as a string:
# the training device, here the CPU too, is passed as a torch.device (torch's
# fused SGD moves ``found_inf`` to its parameters' device, a no-op on a GPU).
HOST_METHODS = {"tolist", "numpy", "cpu", "item", "__bool__", "__float__", "__int__",
                "__index__"}


class _Ops(TorchDispatchMode):
    def __init__(self, ops: Counter):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in READS:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, ops: Counter):
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(isinstance(a, str) and a == "cpu"
                                      for a in (*args[1:], *(kwargs or {}).values()))
        if name in HOST_METHODS or to_cpu:
            self.ops[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


class _Reads:
    """Counts host reads in its block: aten ops and tensor methods (a read counts
    at both levels when it is seen at both)."""

    def __enter__(self):
        self.ops = Counter()
        self._modes = [_Methods(self.ops), _Ops(self.ops)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


def test_the_finiteness_check_is_on_by_default():
    """The count below is held for the default; it would mean little otherwise."""
    assert Config().check_finite


def _reads_per_step(method, aux, optimizer="sgd") -> Counter:
    objective, opt, sysm, recipe = stepkit.build(method, aux, optimizer=optimizer)
    # the first step outside the count: lazy optimiser state
    train_step(objective, objective, opt, sysm, stepkit.batch(recipe, 0), 0, 0.5,
               check_finite=True)
    tally, reads = Tally(), _Reads()
    with reads:  # what the loop does every step: the step, and adding it to the tally
        for step in (1, 2):
            out = train_step(objective, objective, opt, sysm, stepkit.batch(recipe, step), step,
                             0.5, check_finite=True)
            tally.add(out)
    assert torch.isfinite(out["loss"])  # real steps were counted, not skipped ones
    return reads.ops


@pytest.mark.parametrize("method,aux", stepkit.PAIRS)
def test_default_step_reads_nothing_on_the_host(method, aux):
    reads = _reads_per_step(method, aux)
    assert not reads, f"{method}+{aux}: {dict(reads)} in 2 steps"


@pytest.mark.parametrize("method,aux", [("byol", "augself"), ("simclr", "none")])
def test_lars_step_reads_nothing_on_the_host(method, aux):
    reads = _reads_per_step(method, aux, "lars")
    assert not reads, f"{method}+{aux}, LARS: {dict(reads)} in 2 steps"


@pytest.mark.parametrize("read", [
    lambda t: t.item(), lambda t: bool(t), lambda t: t.tolist(), lambda t: t.cpu(),
    lambda t: t.to("cpu"), lambda t: t.numpy(), lambda t: t.nonzero()])
def test_the_count_sees_each_kind_of_host_read(read):
    """The counter's own check, the step's old read (.item()) among them."""
    with _Reads() as reads:
        read(torch.ones(()))
    assert reads.ops, reads.ops
