"""The Batch's parameters are one float32 (B, V, WIDTH) row on the views'
device, and ``batch.params[field]`` are views of it, on every backend and every
stage a backend can run here (issue 23.1); the stage chosen changes how views
are rendered, never the parameters; build_loader resolves backend, device and
stage once and records them on the loader."""

import numpy as np
import pytest
import torch
from conftest import device_for, every_backend

from pipelines.build import LoaderConfig, build_loader, resolve_stage
from pipelines.params import FIELDS, OFFSETS, WIDTH


def _stages(backend: str, device: str) -> list[str]:
    """Every stage ``backend`` can run on ``device`` here."""
    if backend == "torchvision":
        return ["auto"]
    out = ["auto", "torch", "numba"] if device == "cpu" else ["auto", "torch"]
    return out + (["done"] if backend == "ffcv" else [])


def _first(data, backend, stage, keep_raw=False):
    loader = build_loader(LoaderConfig(
        data=str(data), backend=backend, preset="augself", size=32, small_size=16,
        batch_size=8, seed=3, workers=1, device=device_for(backend), stage=stage,
        keep_raw=keep_raw))
    loader.set_epoch(2)
    return loader, next(iter(loader))


def _is_view_of(t: torch.Tensor, row: torch.Tensor, field: str) -> bool:
    """t is row[..., field's columns] in row's own memory: no copy."""
    return (t.untyped_storage().data_ptr() == row.untyped_storage().data_ptr()
            and t.data_ptr() == row.data_ptr() + OFFSETS[field] * row.element_size()
            and t.stride() == row.stride())


@pytest.mark.parametrize("backend", every_backend())
def test_every_field_is_a_view_of_one_row_on_every_stage(small_dataset, backend):
    device = device_for(backend)
    rows = {}
    for stage in _stages(backend, device):
        loader, batch = _first(small_dataset, backend, stage)
        assert loader.resolved.backend == backend and loader.resolved.device.type == device
        assert loader.resolved.stage == loader.finish.stage != "auto"
        row = batch.row
        assert row.dtype == torch.float32 and tuple(row.shape) == (8, loader.recipe.num_views, WIDTH)
        assert row.device == batch.views[0].device
        for k in FIELDS:
            p = batch.params[k]
            assert _is_view_of(p, row, k), (stage, k)
            assert torch.equal(p, row[..., OFFSETS[k]:OFFSETS[k] + FIELDS[k]])
        rows[stage] = row.cpu()
    # every stage renders from the same parameters: drawn once, by the loader
    first = next(iter(rows.values()))
    assert all(torch.equal(r, first) for r in rows.values()), list(rows)
    assert first[..., OFFSETS["color"]].ne(1).any()  # draws happened: not the identity


@pytest.mark.parametrize("backend", [b for b in every_backend(without=("torchvision",))])
def test_a_chosen_stage_renders_once(small_dataset, backend):
    """An explicit stage on a backend that can render while decoding (FFCV's op on a
    CPU device) must not render twice: every stage's raw views are within one
    8-bit level of the default's."""
    device = device_for(backend)
    _, want = _first(small_dataset, backend, "auto", keep_raw=True)
    for stage in _stages(backend, device)[1:]:
        _, got = _first(small_dataset, backend, stage, keep_raw=True)
        for a, b in zip(want.raw, got.raw):
            d = (a.to(torch.int16) - b.to(torch.int16)).abs()
            assert d.float().quantile(0.999) <= 1, (stage, int(d.max()))


def test_stage_resolution_refuses_what_a_backend_cannot_do():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_stage("torchvision", cpu, "auto") == "done"
    assert resolve_stage("ffcv", cpu, "auto") == "done"
    assert resolve_stage("dali-cpu", cpu, "auto") == "numba"
    assert resolve_stage("ffcv", cpu, "torch") == "torch"
    assert resolve_stage("dali-gpu", gpu, "torch") == "torch"
    for backend, stage, why in [("torchvision", "torch", "renders views in its workers"),
                                ("dali-cpu", "done", "does not render views itself"),
                                ("dali-gpu", "fused", "unknown stage")]:
        with pytest.raises(ValueError, match=why):
            resolve_stage(backend, cpu, stage)


def test_a_batch_built_by_hand_joins_its_fields_once():
    from pipelines.batch import Batch
    from pipelines.params import identity

    p = identity(4, 2)
    p["color"] = torch.rand(4, 2, 4)
    batch = Batch([torch.zeros(4, 3, 8, 8)] * 2, p, torch.zeros(4).long(), torch.arange(4))
    assert batch.row.shape == (4, 2, WIDTH)
    for k in FIELDS:
        assert _is_view_of(batch.params[k], batch.row, k) and torch.equal(batch.params[k], p[k])
    first = batch.first(1)
    assert first.row.data_ptr() == batch.row.data_ptr() and first.row.shape == (4, 1, WIDTH)
    np.testing.assert_array_equal(first.params["color"].numpy(), p["color"][:, :1].numpy())
