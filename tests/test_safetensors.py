"""backbone.safetensors (issue 24.3): written with backbone.pt, the same tensors,
described by backbone.json; loads into torchvision's ResNets and into timm with
strict=True; tools.evaluate and tools.embed load it (or backbone.pt of an
earlier version's run) and refuse, in one line naming it, a file backbone.json
does not describe."""

import json
import shutil

import numpy as np
import pytest
import torch
import trainrun
from safetensors import safe_open
from safetensors.torch import load_file
from test_eval_tasks import _run_folder
from test_hostile_evaluate import _evaluate, _ids, _split, _written

from pipelines import cli
from tools.embed import main as embed_main
from trainer import checkpoint, run_folder
from trainer.checkpoint import load_backbone_state, save_backbone

ST, PT, INFO = checkpoint.BACKBONE_ST, checkpoint.BACKBONE, checkpoint.BACKBONE_INFO


def _train(data, out, *extra) -> None:
    from trainer import run

    argv = trainrun.args(data, out, "--max-steps", "2", "--batch-size", "16", "--device",
                         "cpu", "--no-tensorboard", *extra)
    assert run.main(argv) == 0


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def _described(run) -> None:
    """Both files there, the same tensors, each one's SHA-256 in backbone.json, and no
    temporary left behind."""
    import hashlib

    info = json.loads((run / INFO).read_text())
    assert info["sha256"] == hashlib.sha256((run / PT).read_bytes()).hexdigest()
    assert info["safetensors"]["sha256"] == hashlib.sha256((run / ST).read_bytes()).hexdigest()
    assert info["safetensors"]["bytes"] == (run / ST).stat().st_size
    _same_tensors(load_file(run / ST), torch.load(run / PT, weights_only=True))
    with safe_open(run / ST, "pt") as f:
        assert f.metadata() == {"format": "pt", "step": str(info["step"])}
    assert not [p for p in run.iterdir() if checkpoint.is_temporary(p)]


def test_resnet18_run_loads_into_torchvision_strict(tiny_dataset, tmp_path):
    """A --backbone resnet18 run (the ImageNet stem, as torchvision's) writes
    backbone.safetensors; with ``fc`` set aside (Identity: no fc entries) torchvision's
    resnet18 takes it with strict=True, i.e. its keys are exactly the model's minus
    fc.weight and fc.bias, and every shape matches; the loaded model computes what
    the run's own backbone computes."""
    import torchvision

    from trainer.evaluate import load_backbone

    run = tmp_path / "run"
    _train(tiny_dataset, run, "--backbone", "resnet18", "--stem", "imagenet")
    _described(run)
    assert checkpoint.backbone_info(run)["step"] == 2  # --max-steps 2: the last checkpoint
    state = load_file(run / ST)
    model = torchvision.models.resnet18()
    assert set(model.state_dict()) - set(state) == {"fc.weight", "fc.bias"}
    assert set(state) <= set(model.state_dict())
    model.fc = torch.nn.Identity()
    model.load_state_dict(state, strict=True)  # raises on a missing, extra or reshaped key
    net, _, _ = load_backbone(run, "cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), net.eval()(x), atol=1e-5)


def test_cifar_stem_loads_into_torchvision_with_the_same_stem(tmp_path):
    """The CIFAR stem (auto at --size <= 64) has a 3x3 conv1 and no max-pool: strict
    loading into torchvision's resnet18 needs that stem, as the README says; the
    ImageNet-stem model refuses it on conv1's shape."""
    import torchvision

    from trainer.models import backbone_state_dict, build_backbone

    net, _ = build_backbone("resnet18", "cifar")
    save_backbone(tmp_path, backbone_state_dict(net), step=1, finished=True)
    state = load_file(tmp_path / ST)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    with pytest.raises(RuntimeError, match="conv1.weight"):
        model.load_state_dict(state, strict=True)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(state, strict=True)


def test_timm_run_loads_into_timm_strict(tiny_dataset, tmp_path):
    timm = pytest.importorskip("timm")
    run = tmp_path / "run"
    _train(tiny_dataset, run, "--backbone", "timm:resnet18")
    _described(run)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.load_state_dict(load_file(run / ST), strict=True)
    _same_tensors(model.state_dict(), load_file(run / ST))


def test_shared_and_non_contiguous_tensors_are_written_apart(tmp_path):
    """safetensors refuses tensors sharing storage and non-contiguous ones; a state
    with tied entries, a transposed view and a channels_last weight is written, and
    reads back equal, each entry its own tensor."""
    w = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    base = torch.randn(5, 6)
    state = {"a.weight": base, "b.weight": base, "c.weight": base.t(), "conv.weight": w,
             "n": torch.tensor(3)}
    save_backbone(tmp_path, state, step=4, finished=False)
    back, path = load_backbone_state(tmp_path)
    assert path.name == ST
    _same_tensors(back, {k: v.contiguous() for k, v in state.items()})
    assert back["a.weight"].data_ptr() != back["b.weight"].data_ptr()
    _described(tmp_path)


def test_a_refused_state_writes_nothing(tmp_path):
    """A state the safetensors file cannot hold is refused before either file is
    written: the previous pair stays described."""
    save_backbone(tmp_path, {"w": torch.ones(2)}, step=1, finished=False)
    with pytest.raises(TypeError, match="'extra'"):
        save_backbone(tmp_path, {"w": torch.zeros(2), "extra": 3}, step=2, finished=False)
    assert checkpoint.backbone_info(tmp_path) == {"step": 1, "finished": False}
    assert torch.equal(load_backbone_state(tmp_path)[0]["w"], torch.ones(2))


def _described_run(tmp_path):
    """A run folder (small backbone) with both files and backbone.json, step 7."""
    run = _run_folder(tmp_path)
    save_backbone(run, torch.load(run / PT, weights_only=True), step=7, finished=True)
    return run


def _refused(capsys, run, train, tmp_path, *names):
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 1 and err.startswith("evaluate: error:") and len(err.splitlines()) == 1, err
    assert all(n in err for n in names), err
    assert not _written(run, train).exists()
    rc = cli.run(embed_main, "embed", [str(run), "--data", str(train), "--out",
                                       str(tmp_path / "refused.npy"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("embed: error:") and len(err.splitlines()) == 1, err
    assert all(n in err for n in names), err
    assert not (tmp_path / "refused.npy").exists()


@pytest.mark.parametrize("how", ["truncated", "swapped", "no backbone.json",
                                 "older backbone.json"])
def test_a_safetensors_file_backbone_json_does_not_describe_is_refused(how, tmp_path, capsys):
    """Cut short; another run's (valid safetensors, other weights); next to no
    backbone.json (a pre-backbone.json run never had one); next to a backbone.json of
    a version that wrote no safetensors: each is one line naming the file."""
    run = _described_run(tmp_path)
    train = _split(tmp_path, "train", {"a": _ids(0, 3), "b": _ids(10, 3)})
    path = run / ST
    names = [str(path)]
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
        names.append(str(run / INFO))
    elif how == "swapped":
        other = tmp_path / "other"
        other.mkdir()
        state = {k: v + 1 if v.is_floating_point() else v
                 for k, v in torch.load(run / PT, weights_only=True).items()}
        save_backbone(other, state, step=7, finished=True)
        shutil.copy(other / ST, path)
        names.append(str(run / INFO))
    elif how == "no backbone.json":
        (run / INFO).unlink()
    else:
        info = json.loads((run / INFO).read_text())
        del info["safetensors"]
        (run / INFO).write_text(json.dumps(info))
        names.append(str(run / INFO))
    _refused(capsys, run, train, tmp_path, *names)


def test_old_run_folders_without_safetensors_still_evaluate(tmp_path, capsys):
    """backbone.pt alone (no backbone.json), and backbone.pt with a backbone.json of a
    version before safetensors: both evaluate and embed as before."""
    run = _run_folder(tmp_path)  # backbone.pt only
    train = _split(tmp_path, "train", {"a": _ids(0, 3), "b": _ids(10, 3)})
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 0, err
    assert json.loads(_written(run, train).read_text())["backbone"] == {"step": None,
                                                                        "finished": None}
    save_backbone(run, torch.load(run / PT, weights_only=True), step=5, finished=True)
    (run / ST).unlink()
    info = json.loads((run / INFO).read_text())
    del info["safetensors"]
    (run / INFO).write_text(json.dumps(info))
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 0, err
    assert json.loads(_written(run, train).read_text())["backbone"] == {"step": 5,
                                                                        "finished": True}
    assert cli.run(embed_main, "embed", [str(run), "--data", str(train), "--out",
                                         str(tmp_path / "old.npy"), "--quiet"]) == 0
    assert "step 5" in capsys.readouterr().err


def test_either_file_alone_evaluates_and_safetensors_is_preferred(tmp_path, capsys):
    """Both present: backbone.safetensors is the one loaded. Either one alone (the
    other deleted) evaluates, and embeds the same rows; neither is one line."""
    run = _described_run(tmp_path)
    train = _split(tmp_path, "train", {"a": _ids(0, 3), "b": _ids(10, 3)})
    assert load_backbone_state(run)[1] == run / ST
    rows = {}
    for gone in (PT, ST):
        moved = tmp_path / f"moved-{gone}"
        shutil.move(run / gone, moved)
        kept = ST if gone == PT else PT
        assert load_backbone_state(run)[1] == run / kept
        rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
        assert rc == 0, err
        assert json.loads(_written(run, train).read_text())["backbone"]["step"] == 7
        out = tmp_path / f"{kept}.npy"
        assert cli.run(embed_main, "embed", [str(run), "--data", str(train), "--out",
                                             str(out), "--quiet"]) == 0
        assert "step 7" in capsys.readouterr().err
        rows[kept] = np.load(out)["embedding"]
        shutil.move(moved, run / gone)
    assert np.array_equal(rows[PT], rows[ST])
    (run / PT).unlink()
    (run / ST).unlink()
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 1 and len(err.splitlines()) == 1 and str(run / ST) in err and PT in err, err


def test_a_folder_holding_only_safetensors_holds_a_run(tmp_path):
    """backbone.safetensors is one of the run's outputs: a new run refuses a folder
    holding it, and --overwrite removes it with the rest of the earlier run."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ST).write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_folder.check(out, resume=False, overwrite=False)
    run_folder.claim(out, resume=False, overwrite=True).release(unlink=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
