"""Progress bars in a terminal: the long stages' progress, gathered where the driver can draw it.

Without a terminal (CI, ``ray job submit`` logs, a pipe) long stages print plain lines every 30 s
(collapse.progress). With one, the driver (jobs/run.py) opens a :class:`ProgressBoard`: a named
actor of no CPU in the run's Ray namespace. Every process of the run that makes progress (a
training's rank 0, the sample and featurize stages in the driver or a stage runner) finds it with
:func:`poster` and posts a tick (collapse.progress.tick: what, done, total, unit, rate, loss) about
once a second instead of printing lines; :class:`Bars`, a thread of the driver, reads the board
twice a second and draws one tqdm bar per piece of work, until its done reaches its total. The
driver's own lines go through :meth:`Bars.write`, above the bars. Nothing here changes what a run
computes: a poster that cannot reach the board drops the tick.
"""
from __future__ import annotations

import shutil
import sys
import threading

BOARD = "collapse-progress"
POLL_S = 0.5


class ProgressBoard:
    """The latest tick of each piece of work (keyed by its ``what``)."""

    def __init__(self):
        self.ticks: dict[str, dict] = {}

    def post(self, tick: dict) -> None:
        self.ticks[str(tick["what"])] = dict(tick)

    def peek(self) -> dict:
        return dict(self.ticks)

    def take(self) -> dict:
        """The latest ticks; a finished piece of work (done >= total) is reported once, then dropped."""
        out = dict(self.ticks)
        self.ticks = {k: t for k, t in self.ticks.items() if t["done"] < t["total"]}
        return out


def open_board():
    """The run's board (created once per Ray namespace, held by this driver's job)."""
    import ray
    return ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard).options(name=BOARD, get_if_exists=True).remote()


def poster():
    """A function that posts a tick to the run's board, or None where no board is open (no terminal:
    the caller prints plain lines)."""
    import ray
    if not ray.is_initialized():
        return None
    try:
        board = ray.get_actor(BOARD)
    except ValueError:
        return None

    def post(tick: dict) -> None:
        try:
            board.post.remote(tick)
        except Exception:  # noqa: BLE001 - a lost board costs the bar, never the stage
            pass
    return post


def label(what: str) -> str:
    """A bar's name: its verb and the last three parts of its URL (``train vanilla/gen-002/model``,
    ``featurize shared/gen-001/pool (classifier)``)."""
    verb, _, rest = str(what).partition(" ")
    if not rest or "/" in verb:
        return str(what)
    parts = [p for p in rest.split("/") if p]
    return " ".join([verb, "/".join(parts[-3:])]) if len(parts) > 3 else str(what)


# tqdm's own rate is left out: work arrives in steps of a shard; the rate the stage measured is the postfix
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"


class Bars:
    """tqdm bars of the board's ticks, drawn by a thread of the driver until :meth:`close`."""

    def __init__(self, board, stream=None, poll_s: float = POLL_S):
        self.board, self.stream, self.poll_s = board, stream or sys.stderr, poll_s
        self.bars: dict = {}
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="collapse-progress-bars", daemon=True)

    def __enter__(self) -> Bars:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, line: str) -> None:
        """A line of the driver's, printed above the bars."""
        from tqdm import tqdm
        with self.lock:
            tqdm.write(str(line), file=self.stream)

    def draw(self, ticks: dict) -> None:
        from tqdm import tqdm
        with self.lock:
            for what, t in ticks.items():
                bar = self.bars.get(what)
                if bar is None:
                    # the terminal's size; one that says 0 x 0 (a new pty) gets 80 x 24, where tqdm drew nothing
                    size = shutil.get_terminal_size((80, 24))
                    bar = self.bars[what] = tqdm(total=int(t["total"]), desc=label(what), unit=t.get("unit", "it"),
                                                 file=self.stream, leave=False, ncols=size.columns, nrows=size.lines,
                                                 bar_format=BAR_FORMAT)
                bar.update(max(0, int(t["done"]) - bar.n))
                post = ([f"loss {t['loss']:.4f}"] if t.get("loss") is not None else []) + \
                    ([f"{t['rate']:.1f} {t.get('unit', 'it')}/s"] if t.get("rate") is not None else [])
                bar.set_postfix_str(", ".join(post), refresh=False)
                bar.refresh()
                if t["done"] >= t["total"]:
                    bar.close()
                    del self.bars[what]

    def _run(self) -> None:
        import ray
        while not self.stop.wait(self.poll_s):
            try:
                ticks = ray.get(self.board.take.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a slow or lost board: no bars this round
                continue
            self.draw(ticks)

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        with self.lock:
            for bar in self.bars.values():
                bar.close()
            self.bars = {}
