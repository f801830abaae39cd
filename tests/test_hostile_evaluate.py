"""tools/evaluate.py (and tools/embed.py) against a hostile user: splits whose
classes differ, factors one split lacks, a train split too small for a probe, an
edited manifest, a backbone.json that does not describe backbone.pt, NaN and
out-of-range options. Each case: the right figure or one named line, never a
traceback, never a result scored against the wrong labels."""

import json

import numpy as np
import pytest
from conftest import run_tool
from PIL import Image
from test_eval_tasks import _run_folder

from pipelines import cli
from tools import convert_dataset
from tools.evaluate import main as evaluate_main


def _image(i: int) -> Image.Image:
    """Image i: a blocky random 16x16 picture, the same pixels whenever i is the same
    (blocks, not pixel noise: a random backbone pools noise into near-equal features)."""
    rgb = np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(rgb).resize((16, 16), Image.NEAREST)


def _split(root, name: str, classes: dict[str, list[int]]):
    """A converted split whose ImageFolder class folders are ``classes``' keys, each
    holding the images of the ids listed."""
    for cls, ids in classes.items():
        d = root / f"src-{name}" / "train" / cls
        d.mkdir(parents=True)
        for i in ids:
            _image(i).save(d / f"{i}.png")
    out = root / name
    assert convert_dataset.main([str(root / f"src-{name}"), "--split", "train", "--out",
                                 str(out), "--write-mode", "raw", "--quiet", "--no-beton"]) == 0
    return out


def _ids(first: int, n: int = 6) -> list[int]:
    return list(range(first, first + n))


def _evaluate(capsys, run, train, test, *extra):
    rc = cli.run(evaluate_main, "evaluate", [str(run), "--train", str(train), "--test",
                                             str(test), "--device", "cpu", "--no-progress",
                                             *map(str, extra)])
    return rc, capsys.readouterr().err


def _written(run, test, ext=".json"):
    return run / "eval" / f"{test.parent.name}_{test.name}{ext}"


def _doc(run, test):
    return json.loads(_written(run, test).read_text())


def test_test_classes_are_matched_to_train_classes_by_name(tmp_path, capsys):
    """Train {a, b, c}, test {b, c, d}, b's and c's images identical to train's: with
    k = 1 every known test image finds itself (top-1 exactly 1.0); d is unknown to
    train, reported and left out. Matched by index, test b (label 0) would be
    compared with train a (label 0): top-1 0."""
    run = _run_folder(tmp_path)
    train = _split(tmp_path, "train", {"a": _ids(0), "b": _ids(10), "c": _ids(20)})
    test = _split(tmp_path, "test", {"b": _ids(10), "c": _ids(20), "d": _ids(30)})
    rc, err = _evaluate(capsys, run, train, test, "--task", "knn,linear", "--knn-k", "1")
    assert rc == 0, err
    doc = _doc(run, test)
    assert doc["results"]["knn"]["class"]["top1"] == 1.0
    assert doc["labels"]["class"] == {"unknown_test_classes": ["d"], "excluded_test_samples": 6,
                                      "test_samples": 12}
    assert "'d'" in err and "6 test samples" in err and "Traceback" not in err
    # a test split with no class train knows: nothing to score, one line, nothing written
    other = _split(tmp_path, "other", {"x": _ids(40), "y": _ids(50)})
    cached = sorted((run / "eval" / "features").glob("*.pt"))
    rc, err = _evaluate(capsys, run, train, other, "--task", "knn,linear")
    assert rc == 1 and err.startswith("evaluate: error:") and len(err.splitlines()) == 1, err
    assert "'x'" in err and not _written(run, other).exists()
    assert sorted((run / "eval" / "features").glob("*.pt")) == cached  # refused before work


def test_factor_values_are_matched_by_name_across_splits(tmp_path, capsys):
    """Train colours {blue, green, red}, test {green, white}: sorted per split, test's
    green (0) would meet train's blue (0). By name, every green test image finds its
    identical train image; white is reported unknown; shape matches as it is."""
    run = _run_folder(tmp_path)
    train = _split(tmp_path, "train", {"colour=blue,shape=x": _ids(0),
                                       "colour=green,shape=x": _ids(10),
                                       "colour=red,shape=y": _ids(20)})
    test = _split(tmp_path, "test", {"colour=green,shape=x": _ids(10),
                                     "colour=white,shape=y": _ids(30)})
    rc, err = _evaluate(capsys, run, train, test, "--task", "knn", "--knn-k", "1")
    assert rc == 0, err
    doc = _doc(run, test)
    assert doc["results"]["knn"]["colour"]["top1"] == 1.0
    assert doc["labels"]["colour"] == {"unknown_test_values": ["white"],
                                       "excluded_test_samples": 6, "test_samples": 6}
    assert doc["labels"]["shape"] == {"unknown_test_values": [], "excluded_test_samples": 0,
                                      "test_samples": 12}
    assert doc["results"]["knn"]["class"]["top1"] == 1.0  # the green images, by class name
    assert "white" in err


def test_a_factor_one_split_lacks_is_skipped_not_a_crash(tmp_path, capsys):
    """Train classes colour=...,shape=..., test classes plain names: the end of
    training (trainer.run's quick tasks) and the tool both finish, naming what they
    skipped; before, a bare KeyError: 'colour'."""
    from trainer.evaluate import EvalConfig, evaluate_run

    run = _run_folder(tmp_path)
    train = _split(tmp_path, "train", {"colour=h000,shape=star": _ids(0),
                                       "colour=h030,shape=star": _ids(10)})
    test = _split(tmp_path, "test", {"cat": _ids(0), "dog": _ids(10)})
    res = evaluate_run(run, str(train), str(test), "cpu",
                       EvalConfig(tasks=("linear", "knn", "color"), progress=False))
    for task in ("linear", "knn"):
        for factor in ("colour", "shape"):
            assert "test split" in res[task][factor]["skipped"], res[task]
            assert factor in res[task][factor]["skipped"]
        assert "no test sample" in res[task]["class"]["skipped"]  # cat, dog: unknown
    assert np.isfinite(res["color"]["r2"])
    err = capsys.readouterr().err
    assert "skipped" in err and "colour" in err
    r = run_tool("tools.evaluate", run, "--train", train, "--test", test, "--task",
                 "knn,color", "--device", "cpu", "--no-progress")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "skipped knn (colour)" in r.stderr
    doc = _doc(run, test)
    assert doc["labels"]["colour"]["skipped"] and "skipped" in doc["results"]["knn"]["shape"]


def test_a_task_that_cannot_run_keeps_the_others(tmp_path, capsys):
    """One image per class in train: the linear probe has no validation split. It is
    recorded as skipped, named on stderr, and kNN and colour are still written
    (.json and .md); before, the whole evaluation ended with an unprefixed error."""
    run = _run_folder(tmp_path)
    train = _split(tmp_path, "train", {"a": [0], "b": [1], "c": [2]})
    test = _split(tmp_path, "test", {"a": [0, 7, 8], "b": [1, 5, 6]})
    rc, err = _evaluate(capsys, run, train, test, "--task", "linear,knn,color",
                        "--knn-k", "1")
    assert rc == 0, err
    doc = _doc(run, test)["results"]
    assert "validation split" in doc["linear"]["class"]["skipped"]
    assert "skipped linear (class)" in err and "Traceback" not in err
    assert 0 <= doc["knn"]["class"]["top1"] <= 1 and "r2" in doc["color"]
    md = _written(run, test, ".md").read_text()
    assert "| skipped |" in md and "kNN class" in md


def test_an_edited_manifest_is_one_line_before_any_probe(tmp_path, capsys):
    """A user shortened the train split's class list: sample labels 0..2 meet a list of
    one name. One line naming the manifest, before features are extracted."""
    run = _run_folder(tmp_path)
    train = _split(tmp_path, "train", {"a": _ids(0), "b": _ids(10), "c": _ids(20)})
    manifest = json.loads((train / "manifest.json").read_text())
    manifest["classes"] = ["a"]
    (train / "manifest.json").write_text(json.dumps(manifest))
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("evaluate: error:") and str(train / "manifest.json") in err
    assert "lists 1 class" in err and "reach 2" in err and "re-convert" in err
    assert not list((run / "eval").rglob("*.pt"))  # nothing extracted


def test_the_backbone_step_is_recorded_and_a_mismatch_refused(tmp_path, capsys):
    """backbone.json names the step of backbone.pt: it lands in the eval JSON and the
    .md; a backbone.pt that backbone.json does not describe (a kill between the two
    writes) is one line in evaluate and in embed."""
    import torch

    from tools.embed import main as embed_main
    from trainer.checkpoint import save_backbone

    run = _run_folder(tmp_path)
    state = torch.load(run / "backbone.pt", weights_only=True)
    save_backbone(run, state, step=7, finished=False)
    train = _split(tmp_path, "train", {"a": _ids(0, 3), "b": _ids(10, 3)})
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 0, err
    assert _doc(run, train)["backbone"] == {"step": 7, "finished": False}
    assert "| step |" in _written(run, train, ".md").read_text()
    assert cli.run(embed_main, "embed", [str(run), "--data", str(train), "--out",
                                         str(tmp_path / "e.npy"), "--quiet"]) == 0
    assert "step 7" in capsys.readouterr().err
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, run / "backbone.pt")  # the new weights, the old backbone.json
    rc, err = _evaluate(capsys, run, train, train, "--task", "knn")
    assert rc == 1 and err.startswith("evaluate: error:") and len(err.splitlines()) == 1, err
    assert "backbone.pt" in err and "backbone.json" in err
    rc = cli.run(embed_main, "embed", [str(run), "--data", str(train), "--out",
                                       str(tmp_path / "f.npy"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("embed: error:") and "backbone.json" in err, err
    assert not (tmp_path / "f.npy").exists()


BAD_OPTIONS = [  # (option, value, the range the line must show)
    ("--knn-t", "nan", "(0, 10]"), ("--knn-t", "0", "(0, 10]"), ("--knn-k", "0", "[1, 10000]"),
    ("--knn-k", "2.5", "[1, 10000]"), ("--ways", "1", "[2, 1000]"),
    ("--queries", "inf", "[1, 10000]"), ("--episodes", "10000000", "[1, 1000000]"),
    ("--shots", "1,0", "[1, 10000]"), ("--shots", "1,nan", "[1, 10000]"),
    ("--seed", "-1", "[0, 4294967295]"),  # the trainer's seeds (trainer.config.SEED)
]


@pytest.mark.parametrize("flag,value,shown", BAD_OPTIONS)
def test_numeric_options_are_checked_against_a_documented_range(flag, value, shown, tmp_path,
                                                                 capsys):
    """Checked before any work (the run folder does not even exist), one usage line
    naming the option, the value and the range; the range is in --help."""
    with pytest.raises(SystemExit) as e:
        cli.run(evaluate_main, "evaluate", [str(tmp_path / "none"), "--train", "x", "--test",
                                            "y", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("evaluate: error:") and flag in line and shown in line, err
    assert value.split(",")[-1] in line


def test_ranges_are_in_help_and_nan_is_refused_as_a_user_sees_it(tmp_path, capsys):
    from tools.embed import main as embed_main

    r = run_tool("tools.evaluate", tmp_path, "--train", tmp_path, "--test", tmp_path,
                 "--knn-t", "nan")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "evaluate: error: argument --knn-t: 'nan'" in r.stderr and "(0, 10]" in r.stderr
    for main in (evaluate_main, embed_main):
        with pytest.raises(SystemExit):
            main(["--help"])
    help_text = capsys.readouterr().out
    for flag, _, rng in BAD_OPTIONS:
        assert rng in help_text.split(flag, 1)[1][:300], (flag, help_text)
    assert "[1, 4096]" in help_text.rsplit("--batch", 1)[1][:300]  # its option line
    with pytest.raises(SystemExit) as e:  # embed: checked before the run folder is looked at
        cli.run(embed_main, "embed", [str(tmp_path / "none"), "--data", str(tmp_path),
                                      "--out", str(tmp_path / "e.npy"), "--batch", "100000000"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "embed: error: argument --batch" in err and "[1, 4096]" in err
