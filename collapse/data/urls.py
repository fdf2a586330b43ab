"""The one place that builds the URLs of a run (docs/ARCHITECTURE.md, "Run layout").

``<run>`` is any fsspec URL (``file://``, ``s3://`` on any endpoint, ``gs://``, ``memory://``, or a
bare local path). Every stage asks this module where to read and write; nothing else formats paths.

    <run>/config.yaml                      resolved config and its hash
    <run>/real/train/, <run>/real/holdout/ imported real data
    <run>/<strategy>/gen-NNN/train/        the training set D_n (a sample set)
    <run>/<strategy>/gen-NNN/model/        the trained model (diffusers format)
    <run>/<strategy>/gen-NNN/pool/         sampled candidates (a sample set)
    <run>/<strategy>/gen-NNN/selection/    what was kept, with the reason and score of each key
    <run>/<strategy>/gen-NNN/metrics.json  every figure of that generation
    <run>/report/                          the HTML report
    <run>/tensorboard/<strategy>/          TensorBoard event files (config trackers; cluster.trackers)
    <run>/mlruns/                          MLflow's local file store (the same; W&B puts its own <run>/wandb/)
    <run>/stages/<stage key>/manifest.json a finished stage's record: config hash, wall time (written last)

Features live inside the set they describe (``<set>/features/<extractor>.npy``), so every set
(real, training set, pool) is featurized once, wherever it is.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from collapse.data.storage import join, scheme_of
from collapse.errors import check_int

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def absolute_url(url: str, cwd: str | None = None) -> str:
    """``url`` with a relative or ``~`` local path made absolute against ``cwd`` (default: this process's).

    Entry points call this once, before a URL reaches any other process: Ray Train workers and
    actors run in other working directories, where a relative path names something else. A bare
    path stays a bare (absolute) path, ``file://`` and ``local://`` keep their scheme; every other
    scheme (``s3://``, ``gs://``, ``memory://``, ...) is returned unchanged.
    """
    if not isinstance(url, str) or not url:
        return url
    scheme = scheme_of(url)
    if scheme not in ("file", "local"):
        return url
    prefix, path = (url.split("://", 1)[0] + "://", url.split("://", 1)[1]) if "://" in url else ("", url)
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd or os.getcwd(), path)
    return prefix + os.path.normpath(path)


def absolute_source(spec: str, cwd: str | None = None) -> str:
    """A source spec (``collapse.data.importers``) with its local path made absolute.

    ``folder:PATH``, ``npy:PATH``, ``wds:PATH``, ``cifar10:PATH`` and ``parquet:PATH`` get an absolute PATH. A bare path that exists
    and whose kind is unambiguous gets its prefix: a ``.npy``/``.npz`` file is ``npy:``, a directory
    is ``folder:``, unless it holds a ``manifest.json`` (a sample set: left as an absolute path).
    Named sources (``fashion-mnist``, ``digits``) and remote URLs are returned unchanged.
    """
    if not isinstance(spec, str) or not spec:
        return spec
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("folder", "npy", "wds", "cifar10", "parquet") and arg and "://" not in arg:
        return f"{kind}:{absolute_url(arg, cwd)}"
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist", "digits"):
        return spec
    if "://" in spec:
        return absolute_url(spec, cwd)
    path = absolute_url(spec, cwd)
    if os.path.isfile(path) and path.lower().endswith((".npy", ".npz")):
        return f"npy:{path}"
    if os.path.isdir(path):
        return path if os.path.exists(os.path.join(path, "manifest.json")) else f"folder:{path}"
    return spec


def gen_dir(generation: int) -> str:
    return f"gen-{check_int(generation, 'generation', low=1):03d}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def features_url(set_url: str, extractor: str) -> str:
    return join(set_url, "features", extractor)


@dataclass(frozen=True)
class RunLayout:
    """URLs of one run rooted at ``root``."""
    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @property
    def config(self) -> str:
        return join(self.root, "config.yaml")

    @property
    def metrics_log(self) -> str:
        return join(self.root, "metrics.jsonl")

    @property
    def report(self) -> str:
        return join(self.root, "report")

    @property
    def tensorboard(self) -> str:
        """TensorBoard event files, one directory per strategy (cluster.trackers)."""
        return join(self.root, "tensorboard")

    @property
    def mlruns(self) -> str:
        """MLflow's file store of ``trackers.mlflow: local`` (cluster.trackers)."""
        return join(self.root, "mlruns")

    def stage_record(self, stage_key: str) -> str:
        """Where a finished stage's record (config hash, wall time) is committed, by plan key."""
        return join(self.root, "stages", stage_key)

    def real(self, split: str) -> str:
        if split not in ("train", "holdout"):
            raise ValueError(f"real split must be 'train' or 'holdout', got {split!r}")
        return join(self.root, "real", split)

    @property
    def classifier(self) -> str:
        """The run's sample-quality classifier (collapse.classifier), trained on real images."""
        return join(self.root, "real", "classifier")

    def generation(self, strategy: str, generation: int) -> str:
        if not _NAME.match(strategy):
            raise ValueError(f"strategy name {strategy!r} must match {_NAME.pattern}")
        return join(self.root, strategy, gen_dir(generation))

    def train_set(self, strategy: str, generation: int) -> str:
        return join(self.generation(strategy, generation), "train")

    def model(self, strategy: str, generation: int) -> str:
        return join(self.generation(strategy, generation), "model")

    def pool(self, strategy: str, generation: int) -> str:
        return join(self.generation(strategy, generation), "pool")

    def selection(self, strategy: str, generation: int) -> str:
        return join(self.generation(strategy, generation), "selection")

    def metrics(self, strategy: str, generation: int) -> str:
        return join(self.generation(strategy, generation), "metrics.json")
