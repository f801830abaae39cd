"""--compile compiles the whole objective (method, AugSelf, probe) in place
(trainer/systems.py): its loss and every gradient equal the eager objective's on
the same batch, the AugSelf block masks included (a custom autograd Function
inside the compiled graph), and the state-dict keys are unchanged."""

import pytest
import torch

from pipelines.batch import Batch
from pipelines.params import identity
from pipelines.recipe import preset
from trainer import systems
from trainer.build import build_objective
from trainer.config import from_argv
from trainer.dist import Env


def _objective(compile_: bool):
    argv = ["--data", "-", "--out", "-", "--method", "simsiam", "--aux", "augself",
            "--backbone", "small", "--size", "32", "--device", "cpu", "--precision", "fp32"]
    cfg = from_argv(argv + (["--compile"] if compile_ else []))
    objective = build_objective(cfg, preset("augself", 32), 10)
    sysm = systems.choose(cfg, Env())
    _, model = systems.prepare(objective, cfg, sysm, Env())
    return model


def test_compiled_objective_equals_eager():
    pytest.importorskip("torch._inductor")
    eager, compiled = _objective(False), _objective(True)
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    g = torch.Generator().manual_seed(0)
    params = {k: v + 0.1 * torch.rand(v.shape, generator=g) for k, v in identity(16, 2).items()}
    batch = Batch([torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)], params,
                  torch.randint(0, 10, (16,), generator=g), torch.arange(16))
    outs = []
    for model in (eager, compiled):
        out = model(batch)
        out["loss"].backward()
        outs.append(out)
    for key in ("loss", "ssl", "augself", "probe/loss"):
        torch.testing.assert_close(outs[1][key], outs[0][key], rtol=1e-4, atol=1e-5, msg=key)
    grads = dict(compiled.named_parameters())
    for name, p in eager.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    h = compiled.aux.heads
    assert (h.w2.grad[h.m2 == 0] == 0).all() and (h.w3.grad[h.m3 == 0] == 0).all()
