"""Loader failures surface as errors, not hangs."""

import pytest

from pipelines.build import LoaderConfig, build_loader


@pytest.mark.ffcv
def test_ffcv_thread_death_raises_and_next_epoch_runs(small_dataset, monkeypatch):
    """FFCV's producer thread only prints its exceptions; its own __next__ would then
    wait forever. The loader must raise instead, and a later epoch must work."""
    pytest.importorskip("ffcv")
    import ffcv.loader.epoch_iterator as ei

    loader = build_loader(LoaderConfig(data=str(small_dataset), backend="ffcv", size=24,
                                       batch_size=50, workers=1))

    def boom(self, *args, **kwargs):
        raise ValueError("injected failure")

    with monkeypatch.context() as m:
        m.setattr(ei.EpochIterator, "run_pipeline", boom)
        loader.set_epoch(0)
        with pytest.raises(RuntimeError, match="FFCV's loader thread stopped"):
            list(loader)
    loader.set_epoch(1)
    assert sum(len(b) for b in loader) == 200
