"""Progress bars where the driver has a terminal (cluster.progress_board): ticks posted from other
processes of the run reach the driver's board and are drawn as tqdm bars; without a board, posters
are None and the stages print plain lines (tests/jobs/test_run_local.py runs both through the CLI)."""
import io
import time

import ray

from cluster.progress_board import Bars, label, open_board, poster
from collapse.progress import tick


@ray.remote(num_cpus=0)
def _post_from_a_worker(ticks):
    post = poster()
    if post is None:
        return False
    for t in ticks:
        post(t)
    return True


def _take(board, count: int) -> dict:
    """The board's ticks once ``count`` pieces of work are on it (a post is sent, not awaited)."""
    deadline = time.monotonic() + 30
    while True:
        ticks = ray.get(board.peek.remote())
        if len(ticks) >= count or time.monotonic() > deadline:
            return ray.get(board.take.remote())
        time.sleep(0.05)


def test_ticks_posted_in_other_processes_are_drawn_as_bars_until_done(ray_local, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # a terminal as wide as the lines asserted on
    assert poster() is None and ray.get(_post_from_a_worker.remote([])) is False  # no board: plain lines
    board = open_board()
    url = "train /runs/demo/vanilla/gen-002/model"
    assert ray.get(_post_from_a_worker.remote([tick(url, 120, 3000, "steps", 6.71, 0.0831),
                                               tick("sample /runs/demo/shared/gen-001/pool", 250, 500, "images", 21.3)]))
    stream = io.StringIO()
    bars = Bars(board, stream=stream)
    bars.draw(_take(board, 2))
    out = stream.getvalue()
    assert "train vanilla/gen-002/model:" in out and "120/3000" in out and "loss 0.0831, 6.7 steps/s" in out, out
    assert "sample shared/gen-001/pool:" in out and "250/500 images" in out, out
    assert set(bars.bars) == {url, "sample /runs/demo/shared/gen-001/pool"}
    # done: drawn once more, then closed and gone from the board
    ray.get(_post_from_a_worker.remote([tick(url, 3000, 3000, "steps", 6.7, 0.05)]))
    deadline = time.monotonic() + 30
    while ray.get(board.peek.remote()).get(url, {}).get("done") != 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    bars.draw(ray.get(board.take.remote()))
    assert "3000/3000" in stream.getvalue() and url not in bars.bars
    assert url not in ray.get(board.take.remote())
    bars.write("[12/28] vanilla/gen-002/train done in 470.1 s")
    assert "[12/28] vanilla/gen-002/train done" in stream.getvalue()
    bars.close()
    assert bars.bars == {}
    # the thread draws what is posted while it runs
    with Bars(board, stream=(threaded := io.StringIO()), poll_s=0.05):
        ray.get(_post_from_a_worker.remote([tick("featurize /x/greedy/gen-002/pool (classifier)", 7, 9, "images")]))
        deadline = time.monotonic() + 30
        while "7/9" not in threaded.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "featurize x/greedy/gen-002/pool (classifier)" not in threaded.getvalue()
    assert "featurize greedy/gen-002/pool (classifier)" in threaded.getvalue() and "7/9" in threaded.getvalue()
    ray.kill(board)


def test_a_bar_is_named_by_the_end_of_its_url():
    assert label("train s3://bucket/runs/demo/greedy/gen-003/model") == "train greedy/gen-003/model"
    assert label("featurize /r/x/real/train (pixel)") == "featurize x/real/train (pixel)"
    assert label("train") == "train" and label("/a/b") == "/a/b"
