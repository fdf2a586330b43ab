"""Progress a person can follow: the run's ETA, and the lines long stages print as they go.

Pure (no Ray, no torch): the driver (cluster.loop), the training workers (cluster.train) and the
sample and featurize stages (cluster.sample, cluster.featurize) format their lines here.

- :class:`ETA`: the time left of a run, as the work left (the plan's training steps, images and
  candidates, ``Stage.sizes``) times a rate in seconds per unit. A stage kind's rate is measured in
  this run once a stage of that kind has finished; until then a stated default stands in, so that
  the ETA is a number from the first stage on (the line names the kinds still on a default).
- :class:`Ticker`: says when a long loop is due to print again (every ``every_s`` seconds, and at
  its end), so that a stage longer than about 30 s prints a line at least every 30 s, and a short
  one prints none.
- :func:`train_line`, :func:`images_line`: the lines themselves (step/total, loss, steps/s, ETA;
  images done/total, images/s); :class:`ImagesProgress` counts a stage's images as its shards arrive
  and says an images line when its ticker is due.
- :func:`tick`: the same figures as data, for a progress bar where the driver has a terminal
  (cluster.progress_board draws them; the lines are then not printed).
"""
from __future__ import annotations

import os
import time

#: Seconds between two progress lines of a long stage.
EVERY_S = 30.0
#: Seconds between two ticks posted for a progress bar (a terminal: cluster.progress_board).
BAR_EVERY_S = 1.0

#: Seconds per unit of work assumed for a stage kind until one of its stages is timed in this run:
#: about what the demo's narrow UNet takes on one CPU core (a training step of batch 64: 0.12 s; a
#: GPU is faster: the measured rate replaces these after the first stage of each kind). Other stage
#: kinds: seconds per stage.
DEFAULT_RATES = {"train": 0.12, "sample": 0.1, "featurize": 0.01, "score": 0.002, "select": 0.001}

#: The owner of the stages every strategy shares (collapse.plan.SHARED; not imported: this module is pure)
SHARED = "shared"
DEFAULT_STAGE_S = 2.0


class ETA:
    """The time left, from the seconds per unit of work of the stages finished in this process
    (train: steps; sample: pool images; featurize: images; score: scored samples; select:
    candidates; else: 1 per stage), or the stated default of a kind not timed yet.

    One after another (``side_by_side=False``) the time left is the sum over the stages left. Side
    by side, the strategies' chains overlap: the time left is that of the shared stages (``SHARED``,
    the ingest) plus the longest chain, or the chains' sum over ``lanes`` when fewer lanes than
    chains run at once. Rates measured side by side already hold the slowdown of sharing the CPUs."""
    UNITS = {"train": "steps", "sample": "pool", "featurize": "images", "score": "generated", "select": "candidates"}

    def __init__(self, side_by_side: bool = False, lanes: int = 0):
        self.side_by_side, self.lanes = side_by_side, int(lanes)
        self.rate: dict[str, float] = {}
        self.seen: dict[str, list[float]] = {}

    def units(self, stage) -> float:
        key = self.UNITS.get(stage.name)
        return float(stage.sizes.get(key, 1) or 1) if key else 1.0

    def done(self, stage, wall: float) -> None:
        work = self.seen.setdefault(stage.name, [0.0, 0.0])
        work[0], work[1] = work[0] + wall, work[1] + self.units(stage)
        self.rate[stage.name] = work[0] / work[1]

    def seconds_per_unit(self, name: str) -> float:
        return self.rate.get(name, DEFAULT_RATES.get(name, DEFAULT_STAGE_S))

    def stage_s(self, stage) -> float:
        return self.seconds_per_unit(stage.name) * self.units(stage)

    def left_s(self, left: list) -> float:
        if not self.side_by_side:
            return sum(self.stage_s(s) for s in left)
        shared, chains = 0.0, {}
        for s in left:
            chain = getattr(s, "strategy", SHARED)
            if chain == SHARED:
                shared += self.stage_s(s)
            else:
                chains[chain] = chains.get(chain, 0.0) + self.stage_s(s)
        if not chains:
            return shared
        lanes = min(self.lanes, len(chains)) if self.lanes > 0 else len(chains)
        return shared + max(max(chains.values()), sum(chains.values()) / lanes)

    def say(self, left: list, elapsed: float) -> str:
        text = f"{elapsed / 60:.1f} min so far"
        if not left:
            return text
        assumed = sorted({s.name for s in left if s.name not in self.rate})
        text += f", ETA {self.left_s(left) / 60:.1f} min"
        return text + (f" (default rates until timed: {', '.join(assumed)})" if assumed else "")


class Ticker:
    """``due()`` is True once every ``every_s`` seconds (the first time ``every_s`` after it was made),
    and for the last item (``final=True``) of a loop that has printed before: a loop shorter than
    ``every_s`` prints nothing. ``every_s`` defaults to ``COLLAPSE_PROGRESS_EVERY_S`` from the
    environment, else :data:`EVERY_S`. ``clock``: injectable for tests."""

    def __init__(self, every_s: float | None = None, clock=time.monotonic):
        self.every_s = float(every_s if every_s is not None else os.environ.get("COLLAPSE_PROGRESS_EVERY_S", EVERY_S))
        self.clock, self.printed = clock, False
        self.last = clock()

    def due(self, final: bool = False) -> bool:
        now = self.clock()
        if now - self.last >= self.every_s or (final and self.printed):
            self.last, self.printed = now, True
            return True
        return False


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def train_line(what: str, step: int, total: int, loss: float, steps_per_s: float) -> str:
    """``train <what>: step 120/3000, loss 0.0831, 4.71 steps/s, ETA 10.2 min``."""
    eta = _minutes((total - step) / steps_per_s) if steps_per_s > 0 else "?"
    return f"train {what}: step {step}/{total}, loss {loss:.4f}, {steps_per_s:.2f} steps/s, ETA {eta}"


def images_line(what: str, done: int, total: int, images_per_s: float) -> str:
    """``sample <pool>: 640/2000 images, 21.3 images/s, ETA 1.1 min``."""
    eta = _minutes((total - done) / images_per_s) if images_per_s > 0 else "?"
    return f"{what}: {done}/{total} images, {images_per_s:.1f} images/s, ETA {eta}"


def tick(what: str, done: int, total: int, unit: str, rate: float | None = None, loss: float | None = None) -> dict:
    """What a progress bar shows of a piece of work (cluster.progress_board): the same figures as
    its line, as data."""
    return {"what": what, "done": int(done), "total": int(total), "unit": unit,
            "rate": None if rate is None else float(rate), "loss": None if loss is None else float(loss)}


class ImagesProgress:
    """A stage's images as its shards arrive: ``add(count)`` after each shard; ``say`` gets an
    :func:`images_line` whenever the ticker is due (and at the end of a stage that printed before).
    With ``post`` (a terminal's progress board, cluster.progress_board.poster) every shard posts a
    :func:`tick` instead, and no line is said."""

    def __init__(self, what: str, total: int, say, ticker: Ticker | None = None, post=None):
        self.what, self.total, self.say, self.post = what, int(total), say, post
        self.ticker, self.done, self.t0 = ticker or Ticker(), 0, time.perf_counter()

    def add(self, count: int) -> None:
        self.done += int(count)
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        if self.post is not None:
            self.post(tick(self.what, self.done, self.total, "images", rate))
        elif self.ticker.due(final=self.done >= self.total):
            self.say(images_line(self.what, self.done, self.total, rate))
