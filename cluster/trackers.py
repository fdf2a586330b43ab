"""Experiment trackers (config section ``trackers``, all off by default), written with their own
clients and no network: each generation's figures and each training's loss and steps/s, the
generation as the step, one tracker run per strategy.

    tensorboard  <run>/tensorboard/<strategy>/ (torch.utils.tensorboard); a run directory off the local
                 disk (s3://) gets the event files written locally and copied there after each log
    mlflow       experiment run.name, a run per strategy tagged strategy, run_name, config_hash, run_dir
                 (a resubmitted run continues it); "local": the file store <run>/mlruns, which MLflow
                 >= 3.13 refuses unless MLFLOW_ALLOW_FILE_STORE=true, set here (when unset) for a file store
    wandb        offline runs in <run>/wandb (a local run directory; else $WANDB_DIR or ./wandb), `wandb sync`

Tags: ``<space>/<figure>`` (pixel/gs, pixel/entropy, ...), ``quality/<figure>``, ``real_share``,
``train/loss`` (the curve's last point), ``train/steps_per_s`` at step n; ``train/loss_curve/gen-NNN``
at the training's steps (not W&B: its steps only grow). Generation 1 goes to every strategy it stands for.
The driver (cluster.loop) logs a stage as it commits it: a resubmitted run does not log again what was
committed before (``<run>/metrics.jsonl`` has it all). No result depends on a tracker: one that fails
(a missing package, an unwritable directory, a bad URI) says one line naming it and the error and is
off for the rest of the run; the others go on.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time

from collapse import config
from collapse.config_checks import TRACKING_URI
from collapse.data import storage
from collapse.data.manifest import read_manifest
from collapse.data.urls import RunLayout

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def figure_scalars(figures: dict) -> dict[str, float]:
    """{tag: value} of every numeric figure of a generation's metrics.json (cluster.stages.score)."""
    out = {f"{space}/{k}": float(v) for space, fig in (figures.get("spaces") or {}).items()
           for k, v in fig.items() if _number(v)}
    out.update({f"quality/{k}": float(v) for k, v in (figures.get("quality") or {}).items() if _number(v)})
    if _number(figures.get("real_share")):
        out["real_share"] = float(figures["real_share"])
    return out


# A tracker: ``write(strategy, rows, curve)`` with rows [(tag, value, step)] (``curve``: at a training's
# steps, else at the generation), ``close()``, and ``where`` it writes.

class _TensorBoard:
    def __init__(self, url: str, strategies: list[str], storage_options=None):
        from torch.utils.tensorboard import SummaryWriter
        self.url, self.so, here = url, storage_options, storage.local_path(url)
        self.dir = here if here is not None else tempfile.mkdtemp(prefix="collapse-tensorboard-")
        self.writers = {s: SummaryWriter(log_dir=os.path.join(self.dir, s)) for s in strategies}
        self.where = self.dir if here is not None else f"{url} (through {self.dir})"

    def write(self, strategy: str, rows: list, curve: bool) -> None:
        for tag, v, step in rows:
            self.writers[strategy].add_scalar(tag, v, global_step=step)
        self._flush()

    def _flush(self, close: bool = False) -> None:
        for w in self.writers.values():
            (w.close if close else w.flush)()
        if storage.local_path(self.url) is None:   # copied whole: event files are small, and appended to
            for base, _, names in os.walk(self.dir):
                for name in names:
                    rel = os.path.relpath(os.path.join(base, name), self.dir)
                    storage.upload_file(os.path.join(base, name), storage.join(self.url, rel), self.so)

    def close(self) -> None:
        self._flush(close=True)
        if storage.local_path(self.url) is None:
            shutil.rmtree(self.dir, ignore_errors=True)


class _MLflow:
    def __init__(self, uri: str, experiment: str, tags: dict, strategies: list[str]):
        if uri.startswith("file:") or not TRACKING_URI.match(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient
        self.client, self.where = MlflowClient(tracking_uri=uri), f"{uri} (experiment {experiment})"
        found = self.client.get_experiment_by_name(experiment)
        eid = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.runs = {s: self._run(eid, s, tags) for s in strategies}

    def _run(self, eid: str, strategy: str, tags: dict) -> str:
        for run in self.client.search_runs([eid], filter_string=f"tags.strategy = '{strategy}'"):
            if run.data.tags.get("run_dir") == tags["run_dir"]:
                self.client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        return self.client.create_run(eid, run_name=strategy, tags={**tags, "strategy": strategy}).info.run_id

    def write(self, strategy: str, rows: list, curve: bool) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(tag, v, now, step) for tag, v, step in rows]
        for i in range(0, len(metrics), 1000):   # MLflow's limit of metrics per batch
            self.client.log_batch(self.runs[strategy], metrics=metrics[i:i + 1000])

    def close(self) -> None:
        for run_id in self.runs.values():
            self.client.set_terminated(run_id)


class _WandB:
    def __init__(self, directory: str | None, experiment: str, tags: dict, strategies: list[str]):
        """``directory``: where W&B puts its wandb/ directory (None: $WANDB_DIR, else the working directory)."""
        import wandb
        if directory is not None:
            os.makedirs(directory, exist_ok=True)   # W&B falls back to a temporary directory silently
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False, disable_git=True)
        self.runs = {}
        for s in strategies:
            run = wandb.init(mode="offline", dir=directory, project=experiment, group=experiment, name=s, tags=[s],
                             config={**tags, "strategy": s}, reinit="create_new", settings=settings)
            run.define_metric("generation")
            run.define_metric("*", step_metric="generation")   # shared generation 1 may come late
            self.runs[s] = run
        self.where = os.path.join(directory or os.environ.get("WANDB_DIR", "."), "wandb")

    def write(self, strategy: str, rows: list, curve: bool) -> None:
        if rows and not curve:   # a W&B run's own steps only grow: no loss curves at training steps
            self.runs[strategy].log({"generation": rows[0][2], **{tag: v for tag, v, _ in rows}})

    def close(self) -> None:
        import wandb
        for run in self.runs.values():
            run.finish()
        wandb.teardown()   # waits for W&B's service to write out every run (finish alone may not, 0.31.0)


class Trackers:
    """The trackers a run writes to, each kept until it fails once (module docstring)."""

    def __init__(self, root: str, experiment: str, tags: dict, strategies: list[str], *, tensorboard: bool = False,
                 mlflow: str = "", wandb: bool = False, say=print, storage_options=None):
        layout, self.say, self.backends = RunLayout(root), say, {}
        if tensorboard:
            self._open("tensorboard", _TensorBoard, layout.tensorboard, strategies, storage_options)
        if mlflow:
            uri = storage.local_path(layout.mlruns) if mlflow == "local" else mlflow
            self._open("mlflow", _MLflow, uri, experiment, tags, strategies)
        if wandb:   # W&B writes local files only: W&B's own directory for a run directory elsewhere
            self._open("wandb", _WandB, storage.local_path(layout.root), experiment, tags, strategies)
        if self.backends:
            say("trackers: " + "; ".join(f"{n} {b.where}" for n, b in self.backends.items()))

    def _open(self, name: str, cls, *args) -> None:
        try:
            self.backends[name] = cls(*args)
        except Exception as e:  # noqa: BLE001 - any failure of a tracker leaves the run alone
            self._fail(name, e)

    def _fail(self, name: str, e: BaseException, close: bool = True) -> None:
        hint = f" (pip install {PACKAGES[name]})" if isinstance(e, ImportError) else ""
        line = " ".join(f"{type(e).__name__}: {e}".split())
        self.say(f"trackers: {name} is off for the rest of the run: {line[:300]}{hint}")
        backend = self.backends.pop(name, None)
        try:
            if close and backend is not None:
                backend.close()
        except Exception:  # noqa: BLE001 - it has failed already and said so
            pass

    def _each(self, method: str, *args) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args)
            except Exception as e:  # noqa: BLE001
                self._fail(name, e, close=method != "close")

    def log_generation(self, strategy: str, generation: int, figures: dict) -> None:
        """Every numeric figure of a generation's metrics.json, at step ``generation``."""
        self._each("write", strategy, [(tag, v, generation) for tag, v in figure_scalars(figures).items()], False)

    def log_training(self, strategy: str, generation: int, curve: list, steps_per_s: float | None) -> None:
        """A training's loss curve [(step, loss)] under train/loss_curve/gen-NNN, and its last loss and
        steps/s at step ``generation``."""
        if curve:
            tag = f"train/loss_curve/gen-{generation:03d}"
            self._each("write", strategy, [(tag, float(v), int(step)) for step, v in curve], True)
        final = [("train/loss", float(curve[-1][1]), generation)] if curve else []
        if _number(steps_per_s) and math.isfinite(steps_per_s):
            final.append(("train/steps_per_s", float(steps_per_s), generation))
        self._each("write", strategy, final, False)

    def log_stage(self, stage, strategies: list[str], storage_options=None) -> None:
        """A committed score stage's figures or train stage's loss, for each of ``strategies``."""
        if not self.backends or stage.name not in ("score", "train"):
            return
        try:
            if stage.name == "score":
                figures = json.loads(storage.read_bytes(stage.outputs["metrics"], storage_options))
            else:
                extra = read_manifest(stage.outputs["model"], storage_options)["extra"]
        except Exception as e:  # noqa: BLE001 - the run's own reads of them say what is wrong
            self.say(f"trackers: {stage.key} not logged: cannot read its figures ({type(e).__name__}: {e})")
            return
        for s in strategies:
            if stage.name == "score":
                self.log_generation(s, stage.generation, figures)
            else:
                self.log_training(s, stage.generation, extra.get("loss_curve") or [], extra.get("steps_per_s"))

    def close(self) -> None:
        self._each("close")
        self.backends.clear()


def open_trackers(cfg: config.RunConfig, say=print, storage_options=None) -> Trackers:
    """The trackers of ``cfg.trackers`` for the run of ``cfg``."""
    t, root = cfg.trackers, RunLayout(cfg.run.run_dir or f"runs/{cfg.run.name}").root
    tags = {"run_name": cfg.run.name, "config_hash": config.config_hash(cfg), "run_dir": root}
    return Trackers(root, cfg.run.name, tags, [s.name for s in cfg.strategies], tensorboard=t.tensorboard,
                    mlflow=t.mlflow, wandb=t.wandb, say=say, storage_options=storage_options)
