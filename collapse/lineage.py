"""What a select stage records (pure): the decision of ``collapse.paradigms`` and
``collapse.selection`` as the selection manifest, and the lineage each kept sample carries into
D_{n+1} (docs/ARCHITECTURE.md, "Lineage"). The stage (cluster/stages/select.py) only reads the
sets, calls these, and writes what they return.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from collapse.paradigms import TrainingSet


def finite_or_none(value) -> float | None:
    """``value`` as a float, or None when it is inf or NaN (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def kept_reasons(candidates: Sequence[str], columns: Mapping) -> dict[str, dict]:
    """``{key: reason}`` of each candidate a selection kept: its pick order, its distance to the
    nearest already-kept candidate then and that candidate's key, the tdf pass and threshold.
    ``columns``: ``Selection.columns()`` over the features of ``candidates``."""
    reasons = {}
    for row in range(len(columns["index"])):
        nearest = int(columns["nearest"][row])
        reasons[candidates[int(columns["index"][row])]] = {
            "order": row, "distance": finite_or_none(columns["distance"][row]), "pass": int(columns["pass"][row]),
            "tau": finite_or_none(columns["tau"][row]), "nearest": candidates[nearest] if nearest >= 0 else None}
    return reasons


def selection_record(next_set: TrainingSet, keys: Sequence[str], *, strategy: str, kind: str, generation: int,
                     reasons: Mapping[str, dict], params: dict | None = None,
                     per_class_quotas: list[int] | None = None) -> dict:
    """The selection manifest of D_{n+1} = ``keys``, chosen by generation n's select stage: the
    strategy and its kind (the manifest's ``kind``), how D_{n+1} was built, each kept key with its
    reason, and the dropped candidates in candidate order."""
    record = {"kind": kind, "strategy": strategy, "how": next_set.how, "generation": generation,
              "seed": next_set.seed, "forced": list(next_set.forced), "candidates": len(next_set.candidates),
              "choose": next_set.choose}
    if per_class_quotas is not None:
        record["per_class"] = {"quotas": list(per_class_quotas)}
    if params is not None:
        record["params"] = params
    kept = set(keys)
    record["kept"] = [{"key": k, **reasons.get(k, {})} for k in keys]
    record["dropped"] = [k for k in next_set.candidates if k not in kept]
    return record


def kept_lineage(next_set: TrainingSet, keys: Sequence[str], *, strategy: str, generation: int,
                 reasons: Mapping[str, dict], per_class: bool = False) -> dict[str, dict]:
    """``{key: decision}``: the entry each sample of D_{n+1} appends to its lineage (the strategy and
    generation that kept it, whether it was forced in, and the selection's reason)."""
    forced = set(next_set.forced)
    return {k: {"strategy": strategy, "generation": generation, "how": next_set.how, "kept": True,
                "forced": k in forced, **({"per_class": True} if per_class and k not in forced else {}),
                **reasons.get(k, {})} for k in keys}
