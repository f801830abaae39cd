"""Labelings of a dataset beyond its classes, read from the class names.

A class named ``key=value,key=value`` (e.g. the synthetic set's
``colour=h030,shape=star``, tools/make_synthetic.py) gives one labeling per key:
each sample's label is the index of its class's value among that key's sorted
values. Any converted dataset can carry factors this way (ImageFolder folder
names); classes named otherwise give the ``class`` labeling only.
"""

from __future__ import annotations

import numpy as np


def factors(classes: list[str]) -> dict[str, list[int]] | None:
    """Per factor, each class's label; None unless every class is ``k=v,...`` with
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
    out = {}
    for key in parsed[0]:
        values = sorted({p[key] for p in parsed})
        out[key] = [values.index(p[key]) for p in parsed]
    return out


def labelings(classes: list[str], labels: np.ndarray) -> dict[str, np.ndarray]:
    """``class`` (the labels themselves) and one labeling per factor."""
    labels = np.asarray(labels)
    out = {"class": labels}
    for key, per_class in (factors(classes) or {}).items():
        out[key] = np.asarray(per_class)[labels]
    return out
