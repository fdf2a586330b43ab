"""What a select stage records (collapse.lineage), without Ray: the selection manifest and the
lineage entry of each kept sample, from a real selection over a few points."""
import math

import numpy as np

from collapse.lineage import finite_or_none, kept_lineage, kept_reasons, selection_record
from collapse.paradigms import TrainingSet
from collapse.selection import select


def _next_set(how="select", forced=("real-0",)):
    return TrainingSet(paradigm="accumulate-grow", generation=3, how=how, seed=7, forced=tuple(forced),
                       candidates=("p-0", "p-1", "p-2", "p-3"), choose=2)


def test_greedy_reasons_name_the_kept_candidates_in_pick_order_with_their_nearest():
    x = np.array([[0.0], [10.0], [0.5], [4.0]])        # greedy: the farthest first, then the farthest from it
    chosen = select(x, 2, "greedy", seed=0)
    reasons = kept_reasons(_next_set().candidates, chosen.columns())
    assert list(reasons) == [_next_set().candidates[i] for i in chosen.indices]
    first, second = reasons.values()
    assert first["order"] == 0 and first["distance"] is None and first["nearest"] is None   # inf: none yet
    assert second["order"] == 1 and second["nearest"] in reasons and second["distance"] > 0
    assert first["tau"] is None and first["pass"] == 0                                        # greedy: no tdf pass


def test_the_record_lists_kept_and_dropped_keys_and_the_lineage_marks_forced_ones():
    next_set = _next_set()
    keys = next_set.keys([1, 3])
    reasons = {"p-1": {"order": 0}, "p-3": {"order": 1}}
    record = selection_record(next_set, keys, strategy="greedy", kind="greedy", generation=2, reasons=reasons,
                              params={"k": 1}, per_class_quotas=[1, 1])
    assert keys == ("real-0", "p-1", "p-3")
    assert record["kind"] == "greedy" and record["generation"] == 2 and record["how"] == "select"
    assert [k["key"] for k in record["kept"]] == list(keys) and record["kept"][1] == {"key": "p-1", "order": 0}
    assert record["dropped"] == ["p-0", "p-2"] and record["forced"] == ["real-0"]
    assert record["per_class"] == {"quotas": [1, 1]} and record["params"] == {"k": 1}
    lineage = kept_lineage(next_set, keys, strategy="greedy", generation=2, reasons=reasons, per_class=True)
    assert lineage["real-0"] == {"strategy": "greedy", "generation": 2, "how": "select", "kept": True,
                                 "forced": True}
    assert lineage["p-3"] == {"strategy": "greedy", "generation": 2, "how": "select", "kept": True,
                              "forced": False, "per_class": True, "order": 1}


def test_a_uniform_draw_records_no_params_and_no_reasons():
    next_set = _next_set(how="uniform", forced=())
    keys = next_set.keys()
    record = selection_record(next_set, keys, strategy="random", kind="vanilla", generation=2, reasons={})
    assert "params" not in record and "per_class" not in record
    assert len(record["kept"]) == 2 and all(set(k) == {"key"} for k in record["kept"])
    assert sorted(record["dropped"] + [k["key"] for k in record["kept"]]) == list(next_set.candidates)


def test_finite_or_none():
    assert finite_or_none(np.float32(1.5)) == 1.5 and finite_or_none(math.inf) is None
    assert finite_or_none(float("nan")) is None
