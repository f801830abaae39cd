"""Labelings of a dataset beyond its classes, read from the class names, and
matched by name between a train and a test split.

A class named ``key=value,key=value`` (e.g. the synthetic set's
``colour=h030,shape=star``, tools/make_synthetic.py) gives one labeling per key:
each sample's label is the index of its class's value among that key's sorted
values. Any converted dataset can carry factors this way (ImageFolder folder
names); classes named otherwise give the ``class`` labeling only.

Two splits are converted separately, and each numbers its own classes (sorted
folder names) and its own factor values: a test split that lacks a class, or has
one train has not, numbers the rest differently. Labels are therefore matched by
name (``match``): the train split's names are the index space, a test sample
whose name train lacks is left out of the scores and reported. Label -1 is an
unlabelled sample (conversion/sources.py) and is left out on both sides.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

UNLABELLED = -1


def factor_values(classes: list[str]) -> dict[str, list[str]] | None:
    """Per factor, each class's value; None unless every class is ``k=v,...`` with
    the same keys."""
    parsed = []
    for name in classes:
        try:
            pairs = dict(part.split("=", 1) for part in name.split(","))
        except ValueError:
            return None
        parsed.append(pairs)
    if not parsed or any(p.keys() != parsed[0].keys() for p in parsed):
        return None
    return {key: [p[key] for p in parsed] for key in parsed[0]}


def factors(classes: list[str]) -> dict[str, list[int]] | None:
    """Per factor, each class's label (the index of its value among the sorted
    values); None unless every class is ``k=v,...`` with the same keys."""
    per_key = factor_values(classes)
    if per_key is None:
        return None
    out = {}
    for key, vals in per_key.items():
        index = {v: k for k, v in enumerate(sorted(set(vals)))}
        out[key] = [index[v] for v in vals]
    return out


def names(classes: list[str]) -> dict[str, list[str]]:
    """Per labeling, each class's name under it: ``class`` -> the class names, one
    entry per factor -> its values."""
    return {"class": list(classes), **(factor_values(classes) or {})}


def _relabel(lookup: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # lookup[label], UNLABELLED where the label is (or lookup maps it there)
    out = np.full(len(labels), UNLABELLED, dtype=np.int64)
    known = labels >= 0
    out[known] = lookup[labels[known]]
    return out


@dataclass
class Matched:
    """One labeling of two splits in the train split's index space."""

    train: np.ndarray              # (N_train,) int64, -1: unlabelled
    test: np.ndarray               # (N_test,) int64, -1: unlabelled or unknown to train
    names: list[str]               # the train split's names: label k is names[k]
    unknown: dict[str, int] = field(default_factory=dict)  # test name train lacks -> samples

    def why_not(self) -> str | None:
        """Why a probe cannot be scored on this labeling, or None."""
        if not (self.train >= 0).any():
            return "the train split has no labelled sample"
        if not (self.test >= 0).any():
            if not self.unknown:
                return "the test split has no labelled sample"
            return (f"no test sample has a name the train split has (unknown to train: "
                    f"{', '.join(map(repr, self.unknown))})")
        return None


def match(train_classes: list[str], train_labels, test_classes: list[str],
          test_labels) -> tuple[dict[str, Matched], dict[str, str]]:
    """Every labeling both splits have, the test names mapped onto the train split's
    by name; and, for each labeling only one split has, why it is skipped."""
    tr, te = names(train_classes), names(test_classes)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    matched, skipped = {}, {}
    for name in tr:
        if name not in te:
            skipped[name] = (f"the test split's class names carry no {name!r} factor (the "
                             "train split's do)")
            continue
        # the class labeling keeps the train split's own numbering; a factor's values
        # are numbered in sorted order, as factors() does
        vocab = tr[name] if name == "class" else sorted(set(tr[name]))
        index = {v: k for k, v in enumerate(vocab)}
        to_train = np.asarray([index[v] for v in tr[name]], dtype=np.int64)
        to_test = np.asarray([index.get(v, UNLABELLED) for v in te[name]], dtype=np.int64)
        test = _relabel(to_test, test_labels)
        lost = test_labels[(test_labels >= 0) & (test == UNLABELLED)]
        unknown = dict(sorted(Counter(te[name][c] for c in lost.tolist()).items()))
        matched[name] = Matched(_relabel(to_train, train_labels), test, vocab, unknown)
    for name in te:
        if name not in tr:
            skipped[name] = (f"the train split's class names carry no {name!r} factor (the "
                             "test split's do)")
    return matched, skipped
