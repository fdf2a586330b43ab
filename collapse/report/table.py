"""The summary table a run prints when it ends: the last generation's figures per strategy."""
from __future__ import annotations


def summary_table(rows: list[dict], space: str = "pixel") -> str:
    """The last generation's figures per strategy, as a fixed-width table."""
    last = {}
    for r in rows:
        if r["strategy"] not in last or r["generation"] > last[r["strategy"]]["generation"]:
            last[r["strategy"]] = r
    cols = ("entropy", "gs", "memorization", "memorization_real_scale", "fd", "precision", "recall")
    heads = {"memorization": "mem d1/d2", "memorization_real_scale": "mem d1<rho"}
    out = [f"{'strategy':<12} {'gen':>3} " + " ".join(f"{heads.get(c, c):>12}" for c in cols) + f" {'real share':>10}"]
    for name, r in last.items():
        f = r["spaces"].get(space, {})
        out.append(f"{name:<12} {r['generation']:>3} " + " ".join(f"{f.get(c, float('nan')):>12.4g}" for c in cols)
                   + f" {r['real_share']:>10.2f}")
    return "\n".join(out)
