"""--compile keeps meaning one graph: the whole objective (method, auxiliary head,
probe: what systems.prepare compiles in place) traces under TorchDynamo as a
single graph with no graph break, for every method x auxiliary head the config
accepts (supervised + condproj is refused: supervised has no projector to
condition). A break would split the step into several compiled graphs with
eager Python (and often a host sync) between them, silently.

Traced on CPU in float32 with the smallest model (backbone small, 16 px views,
narrow heads, as tests/trainrun.py's FAST); graph breaks come from Python
control flow and unsupported calls (an .item() deciding a branch, a print), not
from sizes or the device. explain runs Dynamo's tracer and the captured graph
once, no Inductor. Cost, measured here (2026-11, torch 2.14, one thread a
worker as under xdist): 0.9-3 s of CPU a case, nearly all in Dynamo's bytecode
tracing (SwAV's eight views the most), ~65 s for the 39 cases: ~33 s of wall
with -n 2. torch.compile(backend=CompileCounter) instead of explain costs the same.
"""

import dataclasses

import pytest
import torch

from pipelines.batch import Batch
from pipelines.params import FIELDS, identity
from trainer import systems
from trainer.build import build_objective
from trainer.config import Config, from_argv
from trainer.dist import Env
from trainer.methods import METHODS

# every --aux the config offers (a new head is traced without editing this file)
AUX = next(f for f in dataclasses.fields(Config) if f.name == "aux").metadata["choices"]
SMALL = ["--backbone", "small", "--size", "16", "--small-size", "8", "--proj-hidden", "32",
         "--proj-dim", "16", "--pred-hidden", "8", "--queue-size", "32", "--prototypes", "16",
         "--essl-views", "2", "--device", "cpu", "--precision", "fp32"]
REFUSED = {("supervised", "condproj")}  # trainer/config.py: supervised has no projector


def _argv(method: str, aux: str) -> list[str]:
    return ["--data", "-", "--out", "-", "--method", method, "--aux", aux, *SMALL]


def _objective(method: str, aux: str):
    """(the module systems.prepare hands the loop, its recipe)."""
    from pipelines.build import LoaderConfig, resolve_recipe
    from trainer.build import rotated_views
    from trainer.run import resolve_preset
    cfg = from_argv(_argv(method, aux))
    extra, extra_size = rotated_views(cfg)
    recipe = resolve_recipe(LoaderConfig(data="-", preset=resolve_preset(cfg), size=cfg.size,
                                         small_size=cfg.small_size, rotated_views=extra,
                                         rotated_size=extra_size))
    objective = build_objective(cfg, recipe, 10)
    model, _ = systems.prepare(objective, cfg, systems.choose(cfg, Env()), Env())
    return model.train(), recipe


def _batch(recipe, b: int = 8) -> Batch:
    """A batch as a loader delivers it: each view at its side, channels_last,
    parameters in their ranges (turns 0-3 for the rotated views), labels 0-9."""
    g = torch.Generator().manual_seed(0)
    v = recipe.num_views
    params = identity(b, v)
    params["crop"] = torch.rand(b, v, FIELDS["crop"], generator=g)
    params["color"] += 0.1 * torch.rand(b, v, FIELDS["color"], generator=g)
    params["rot"] = torch.randint(0, 4, (b, v, 1), generator=g).float()
    views = [torch.randn(b, 3, w.size, w.size, generator=g)
             .contiguous(memory_format=torch.channels_last) for w in recipe.views]
    return Batch(views, params, torch.randint(0, 10, (b,), generator=g), torch.arange(b))


@pytest.mark.parametrize("aux", AUX)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_objective_is_one_graph(method, aux):
    if (method, aux) in REFUSED:  # skipped only while the config does refuse it
        with pytest.raises(ValueError, match=aux):
            from_argv(_argv(method, aux))
        pytest.skip(f"the config refuses --method {method} --aux {aux}")
    model, recipe = _objective(method, aux)
    torch._dynamo.reset()  # no graphs or guards left over from another case in this worker
    explained = torch._dynamo.explain(model)(_batch(recipe))
    reasons = [f"{r.reason} at {r.user_stack[-1] if r.user_stack else '?'}"
               for r in explained.break_reasons]
    assert explained.graph_break_count == 0, "\n".join(reasons)
    assert explained.graph_count == 1
