"""One order and one RNG for every backend, and the DALI pipeline's lifetime.

For one seed, every backend here emits the same samples in the same order with
bit-identical parameters (DESIGN.md, "One order and one RNG"); the DALI pipeline
is built once per loader and fed epoch after epoch; several DALI loaders live
and run interleaved in one process; DALI's outputs reach torch with their dtype.
Tensors are compared on the CPU whatever device the loaders deliver on.
"""

import numpy as np
import pytest
import torch
from conftest import HAVE_DALI, backends_here, every_backend

from pipelines import sampling
from pipelines.build import LoaderConfig, build_loader
from pipelines.recipe import PRESETS, preset

dali_backends = [b for b in backends_here() if b.startswith("dali")]


def _cfg(data, backend, **kw):
    base = dict(data=str(data), backend=backend, preset="augself", size=24, small_size=12,
                batch_size=32, workers=2)
    return LoaderConfig(**{**base, **kw})


def _stream(loader, epochs, skip=0):
    """[(epoch, index, params)] for each batch of the given epochs, on the CPU."""
    out = []
    for e in epochs:
        loader.set_epoch(e, skip if e == epochs[0] else 0)
        for b in loader:
            out.append((e, b.index.cpu(), {k: t.cpu() for k, t in b.params.items()}))
    return out


def _assert_same(got, want, what):
    assert len(got) == len(want), what
    for (e1, i1, p1), (e2, i2, p2) in zip(got, want):
        assert e1 == e2 and torch.equal(i1, i2), what
        for k in p2:
            assert torch.equal(p1[k], p2[k]), (what, k)


@pytest.mark.parametrize("name", ["augself", "swav"])
@pytest.mark.parametrize("rank,world,drop_last", [(0, 1, True), (1, 2, False)])
def test_every_backend_same_samples_order_and_params(small_dataset, name, rank, world,
                                                     drop_last):
    """torchvision is the yardstick (plain Python per sample); every other backend
    here must equal it bit for bit over two shuffled epochs, a shard and a last
    partial batch included."""
    kw = dict(preset=name, rank=rank, world=world, drop_last=drop_last, seed=9)
    want = _stream(build_loader(_cfg(small_dataset, "torchvision", **kw)), [0, 1])
    assert len({tuple(i.tolist()) for _, i, _ in want}) == len(want)  # batches differ
    for backend in backends_here():
        if backend != "torchvision":
            got = _stream(build_loader(_cfg(small_dataset, backend, **kw)), [0, 1])
            _assert_same(got, want, backend)


@pytest.mark.parametrize("name", list(PRESETS))
def test_batched_crop_boxes_equal_per_sample_crop_box(name):
    """The numba batch kernel the DALI feeder uses draws torchvision's boxes exactly
    as the plain-Python crop_box the torchvision loader calls, fallback included
    (slivers 3 px tall or wide cannot fit the aspect range: centre crop)."""
    recipe = preset(name, 32, 16)
    g = np.random.default_rng(0)
    heights = np.concatenate([g.integers(8, 600, 300), [3, 500, 1, 40]])
    widths = np.concatenate([g.integers(8, 600, 300), [500, 3, 40, 1]])
    index = g.integers(0, 10**7, len(heights))
    got = sampling.crop_boxes(heights, widths, recipe.views, 13, 4, index)
    assert got.dtype == np.int64 and got.shape == (len(index), len(recipe.views), 4)
    for b in range(len(index)):
        for v, vr in enumerate(recipe.views):
            want = sampling.crop_box(int(heights[b]), int(widths[b]), *sampling.crop_args(vr),
                                     13, 4, int(index[b]), v)
            assert tuple(got[b, v]) == want, (b, v)
    fields = sampling.crop_fields(got, heights, widths)
    b, v = 7, 1
    assert np.array_equal(fields[b, v], sampling.crop_params(got[b, v], heights[b], widths[b]))


@pytest.mark.dali
@pytest.mark.parametrize("backend", every_backend(dali_only=True))
def test_dali_pipeline_built_once_and_resumes_mid_epoch(small_dataset, backend, monkeypatch):
    """Three epochs from one pipeline; an epoch abandoned after one batch, then a
    restart at (epoch 1, batch 2), yields what the uninterrupted epoch yielded."""
    from pipelines import loader_dali

    builds = []
    real = loader_dali.build_pipeline
    monkeypatch.setattr(loader_dali, "build_pipeline", lambda *a: builds.append(1) or real(*a))
    loader = build_loader(_cfg(small_dataset, backend))
    whole = _stream(loader, [0, 1, 2])
    assert len(builds) == 1 and len(whole) == 3 * len(loader)
    loader.set_epoch(0)
    next(iter(loader))                      # abandoned: DALI has batches 1.. in flight
    resumed = _stream(loader, [1, 2], skip=2)
    _assert_same(resumed, whole[len(loader) + 2:], "resumed")
    # A fresh loader started mid-epoch (a resumed run) yields the same too.
    fresh = _stream(build_loader(_cfg(small_dataset, backend)), [1], skip=3)
    _assert_same(fresh, whole[len(loader) + 3: 2 * len(loader)], "fresh")
    assert len(builds) == 2


@pytest.mark.dali
def test_interleaved_dali_loaders_run_to_the_end(small_dataset):
    """Several DALI loaders (every DALI backend here, two presets) built in one
    process and iterated in turn, batch by batch, over two epochs: each yields
    what it yields alone, and nothing crashes."""
    cfgs = [_cfg(small_dataset, b, preset=p, seed=s)
            for b in dali_backends for p, s in (("augself", 1), ("swav", 2))]
    alone = [_stream(build_loader(c), [0, 1]) for c in cfgs]
    loaders = [build_loader(c) for c in cfgs]
    got = [[] for _ in loaders]
    for e in (0, 1):
        its = []
        for loader in loaders:
            loader.set_epoch(e)
            its.append(iter(loader))
        live = list(range(len(its)))
        while live:
            for k in list(live):
                b = next(its[k], None)
                if b is None:
                    live.remove(k)
                else:
                    got[k].append((e, b.index.cpu(), {n: t.cpu() for n, t in b.params.items()}))
    for k, c in enumerate(cfgs):
        _assert_same(got[k], alone[k], (c.backend, c.preset))


@pytest.mark.dali
@pytest.mark.parametrize("backend", every_backend(dali_only=True))
def test_dali_outputs_reach_torch_with_their_dtype(backend):
    """to_torch keeps dtype and values: uint8, float32 and int64 outputs of a DALI
    graph (on the GPU for dali-gpu) against the arrays that went in."""
    from nvidia.dali import fn, pipeline_def

    from pipelines.loader_dali import to_torch

    gpu = backend == "dali-gpu"
    g = np.random.default_rng(0)
    data = [g.integers(0, 256, (3, 5, 3), dtype=np.uint8),
            g.standard_normal((3, 4)).astype(np.float32),
            g.integers(-2**40, 2**40, (3, 2), dtype=np.int64)]

    @pipeline_def(batch_size=3, num_threads=1, device_id=0 if gpu else None)
    def pipe():
        outs = fn.external_source(source=lambda: [list(a) for a in data], num_outputs=3,
                                  batch=True)
        return tuple(o.gpu() if gpu else o for o in outs)

    p = pipe()
    p.build()
    device = torch.device("cuda" if gpu else "cpu")
    stream = torch.cuda.current_stream() if gpu else None
    for out, want in zip(p.run(), data):
        t = to_torch(out, device, stream)
        assert t.device.type == device.type
        assert torch.equal(t.cpu(), torch.from_numpy(want))


@pytest.mark.skipif(not HAVE_DALI, reason="needs nvidia-dali (wds2idx) to rewrite records")
def test_records_without_sizes_read_them_from_headers(small_dataset, tmp_path):
    """Records converted before the meta member held the image size (16-byte
    [label, index]) still give the same table: sizes from the image headers."""
    import io
    import json
    import shutil
    import tarfile

    from wds2idx import IndexCreator

    from pipelines.records import Records

    old = tmp_path / "old"
    shutil.copytree(small_dataset, old, ignore=shutil.ignore_patterns("*.beton"))
    for shard in json.loads((old / "manifest.json").read_text())["outputs"]["records"]["shards"]:
        path = old / "records" / shard["tar"]
        with tarfile.open(path) as src:
            members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as dst:
            for m, payload in members:
                if m.name.endswith(".meta"):
                    payload = payload[:16]
                    m.size = 16
                dst.addfile(m, io.BytesIO(payload))
        with IndexCreator(str(path), str(old / "records" / shard["index"]), verbose=False) as ic:
            ic.create_index()
    new_table, old_table = Records(small_dataset).table(), Records(old).table()
    assert (new_table[:, 2:] == [120, 160]).all()
    assert np.array_equal(old_table, new_table)


@pytest.mark.dali
@pytest.mark.parametrize("backend", every_backend(dali_only=True))
def test_prefetching_changes_no_batch(small_dataset, backend):
    """Batches finished ahead (prefetch 2; on a GPU on the side stream) equal those
    finished on demand: indices, parameters and raw views, over two epochs and an
    abandoned one."""
    def run(prefetch):
        loader = build_loader(_cfg(small_dataset, backend, prefetch=prefetch, keep_raw=True))
        loader.set_epoch(0)
        next(iter(loader))  # abandoned with batches finished ahead
        out = []
        for e in (1, 2):
            loader.set_epoch(e)
            out += [(b.index.cpu(), {k: t.cpu() for k, t in b.params.items()},
                     [r.clone() for r in b.raw], [x.float().cpu() for x in b.views])
                    for b in loader]
        return out

    plain, ahead = run(0), run(2)
    assert len(plain) == len(ahead) > 0
    for (i1, p1, r1, v1), (i2, p2, r2, v2) in zip(plain, ahead):
        assert torch.equal(i1, i2)
        assert all(torch.equal(p1[k], p2[k]) for k in p1)
        assert all(torch.equal(a, b) for a, b in zip(r1, r2))
        assert all(torch.equal(a, b) for a, b in zip(v1, v2))
