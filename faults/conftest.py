"""`make faults`: the fault matrix (outside `make test`; its fast cases live in tests/). Fixtures come
from the test suite: the session's Ceph gateway (restartable) and buckets."""
from tests.conftest import ceph_bucket, ceph_s3  # noqa: F401  (fixtures, by name)

#: one row per fault: filled by faults/test_faults.py, printed at the end of the session
TABLE: list[dict] = []
COLUMNS = ("fault", "injected", "runs_completed", "samples_lost", "samples_duplicated", "equal_to_undisturbed")


def pytest_terminal_summary(terminalreporter):
    if not TABLE:
        return
    w = [max(len(c), *(len(str(r[c])) for r in TABLE)) for c in COLUMNS]
    line = lambda vals: "  ".join(str(v).ljust(n) for v, n in zip(vals, w))  # noqa: E731
    terminalreporter.write_sep("=", "fault matrix")
    terminalreporter.write_line(line(COLUMNS))
    for r in TABLE:
        terminalreporter.write_line(line([r[c] for c in COLUMNS]))
    for r in TABLE:
        if r.get("note"):
            terminalreporter.write_line(f"{r['fault']}: {r['note']}")
