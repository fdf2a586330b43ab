"""The training stage: DeepSpeed ZeRO through Ray Train's TorchTrainer, gloo on CPU and NCCL on GPU.

Each worker holds the training set in memory (checked against its manifest's sha256 as it is read;
N x H x W x C bytes: 100 MB for 32768 CIFAR-10 images), computes its slots of each step's global
batch with the epsilon-prediction loss of ``collapse.diffusion``, and every ``checkpoint_every`` steps all ranks
write a DeepSpeed checkpoint that is uploaded to ``<model>/checkpoints/step-NNNNNNNN/`` and
committed by a manifest. A restarted worker group (Ray Train's ``FailureConfig``) or a resubmitted
job resumes from the latest committed checkpoint. Rank 0 finally writes the model in diffusers
format to ``<model>/`` and commits its manifest last.

Determinism (``collapse.diffusion.batches``): a step's images, timesteps, noise and dropped labels
are a function of ``(seed, step, position in the global batch)``, never of the rank, so a training
on 1 or W workers is the same experiment (to float tolerance: the gradient is averaged in another
order), and a resumed training takes the same steps as an uninterrupted one. A checkpoint holds
ZeRO optimizer shards of its world size: resuming it on another number of workers is refused, with
the two ways out (see ``train_model``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np

from collapse.data import directories, manifest, storage
from collapse.errors import DataError, check_int
from collapse.imports import from_diffusers, hidden

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainSpec:
    """Hyperparameters of one training run (defaults: the paper's, docs/SCIENCE.md, "Reference setup")."""
    preset: str = "tiny"
    steps: int = 100
    batch_size: int = 128            # global batch: micro batch x world size
    lr: float = 1e-4
    betas: tuple = (0.95, 0.999)
    weight_decay: float = 1e-6
    eps: float = 1e-8
    warmup_steps: int = 500
    grad_clip: float = 1.0
    zero_stage: int = 1
    precision: str = "fp32"          # fp32 | bf16 (autocast; CPU or GPU) | fp16 (autocast + loss scaling; GPU only)
    ema_decay: float = 0.0           # 0 = no EMA
    ema_warmup: bool = False         # the EMA's decay warms up (collapse.diffusion.ema)
    checkpoint_every: int = 0        # 0 = only at the end
    log_every: int = 10
    seed: int = 0

    def validate(self, world_size: int) -> None:
        check_int(self.steps, "train steps", low=1)
        if self.batch_size % world_size:
            raise ValueError(f"train batch_size={self.batch_size} must divide by the {world_size} workers")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")


FP16_ON_CPU = ("train.precision=fp16 needs a CUDA GPU (fp16 autocast with loss scaling); "
               "on a CPU use train.precision=bf16 or fp32")


def deepspeed_config(spec: TrainSpec, world_size: int, on_gpu: bool) -> dict:
    """DeepSpeed's config for one training. Mixed precision is DeepSpeed's ``torch_autocast``: the
    module, the optimizer and so the master weights stay float32, the forward pass runs under
    ``torch.autocast`` (bf16, or fp16 with DeepSpeed's GradScaler), and the EMA and the saved model
    are the float32 weights. Not DeepSpeed's ``fp16``/``bf16`` sections: those cast the module to half
    precision (a float32 batch then fails at the first convolution, and the weights a run saves and
    averages would be the half-precision copies). Gradients are reduced in float32
    (``lower_precision_safe_modules: []``), so W workers average what 1 worker computes."""
    if spec.precision == "fp16" and not on_gpu:
        raise ValueError(FP16_ON_CPU)
    config = {"train_micro_batch_size_per_gpu": spec.batch_size // world_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": spec.grad_clip, "zero_optimization": {"stage": spec.zero_stage},
              "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
    if spec.precision != "fp32":
        config["torch_autocast"] = {"enabled": True, "lower_precision_safe_modules": [],
                                    "dtype": {"bf16": "bfloat16", "fp16": "float16"}[spec.precision]}
    return config


def _grad_scaler(engine):
    """DeepSpeed's GradScaler of an fp16 autocast training (ZeRO's or stage 0's); None otherwise."""
    return getattr(engine.optimizer, "torch_autocast_gradscaler", None) or \
        getattr(engine, "torch_autocast_z0_gradscaler", None)


def _grad_scaler_state(engine):
    """The loss scale goes into the checkpoint: a resumed fp16 training scales as the uninterrupted one."""
    scaler = _grad_scaler(engine)
    return None if scaler is None else scaler.state_dict()


def _load_grad_scaler(engine, state) -> None:
    scaler = _grad_scaler(engine)
    if scaler is not None and state:
        scaler.load_state_dict(state)


def latest_checkpoint(model_url: str, storage_options=None) -> dict | None:
    return manifest.try_read_manifest(storage.join(model_url, CHECKPOINTS), storage_options)


def _maybe_fail(step: int, fail_at_step: int | None, model_url: str, so) -> None:
    """Failure injection (tests of failure handling): the worker process dies, once, at ``fail_at_step``."""
    if fail_at_step is None or step != fail_at_step:
        return
    marker = storage.join(model_url, f"failed-at-{step}")
    if not storage.exists(marker, so):
        storage.write_bytes(marker, b"", so)
        os._exit(17)


def train_loop_per_worker(config: dict) -> None:
    """Body of every Ray Train worker. ``config``: spec (dict), train_url, model_url, storage_options, conditional
    (None, or {"num_classes": K, "p_uncond": p})."""
    timeline = {"worker_started": time.time()}   # wall clock: the driver's fit() call is on the same clock
    import ray.train
    import torch

    on_gpu = torch.cuda.is_available()
    os.environ["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")
    with hidden("mlflow"):  # DeepSpeed's autotuner imports it when installed: ~1 s of every worker's start
        import deepspeed
    import torch.distributed as dist

    get_cosine_schedule_with_warmup, = from_diffusers("get_cosine_schedule_with_warmup")

    from collapse import diffusion
    from collapse.data.samples import SampleSet
    from collapse.diffusion.batches import global_batch, rank_slots, step_draws
    from cluster.progress_board import poster
    from collapse.progress import BAR_EVERY_S, Ticker, tick, train_line
    from collapse.seeding import stage_seed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no JIT compile on CPU (docs/PLATFORM.md)
    _quiet_reports()
    spec = TrainSpec(**config["spec"])
    if not on_gpu:
        torch.set_num_threads(config.get("threads", 1))
    so, model_url = config.get("storage_options"), config["model_url"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    spec.validate(world)

    cond = config.get("conditional") or {}   # {"num_classes": K, "p_uncond": p} for a class-conditional model
    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    unet, scheduler = diffusion.build(spec.preset, cond.get("num_classes"))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps,
                                  weight_decay=spec.weight_decay)
    engine, _, _, lr_sched = deepspeed.initialize(
        model=unet, optimizer=optimizer, config=deepspeed_config(spec, world, on_gpu),
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, spec.warmup_steps, spec.steps))
    ema = diffusion.EMA(engine.module, spec.ema_decay, spec.ema_warmup) if spec.ema_decay > 0 else None
    timeline["initialized"] = time.time()        # imports, process group, model, DeepSpeed engine

    # checkpoints and the final model are staged here; gone when the worker ends, failed or not
    with tempfile.TemporaryDirectory(prefix=f"collapse-train-r{rank}-", dir=storage.spool_dir()) as work, \
            _spool_errors(f"training {model_url} (rank {rank})"):
        # -- resume from the latest committed checkpoint, if any
        step = 0
        latest = latest_checkpoint(model_url, so)
        if latest is not None:
            local = os.path.join(work, "resume")
            directories.download_directory(storage.join(model_url, CHECKPOINTS, latest["extra"]["tag"]),
                                           os.path.join(local, latest["extra"]["tag"]), so)
            _, client = engine.load_checkpoint(local, tag=latest["extra"]["tag"])
            step = int(client["step"])
            if ema is not None:
                ema.load_state_dict(client["ema"])
            _load_grad_scaler(engine, client.get("grad_scaler"))
        resumed_from = step

        # -- train: step s computes the slots rank_slots(B, rank, W) of the global batch
        #    global_batch(seed, s, B, N), with timesteps and noise drawn for the whole batch (batches.py)
        keys, images, metas = SampleSet(config["train_url"], so).load()
        labels = batch_labels(metas, cond["num_classes"], config["train_url"]) if cond else None
        slots, base_seed = rank_slots(spec.batch_size, rank, world), stage_seed(spec.seed, 0, "train")
        image_shape = tuple(diffusion.images_to_tensor(images[:1]).shape[1:])
        t0, seen, losses, curve = time.perf_counter(), 0, [], []
        t_end = None
        warm_at, t_warm = step + min(5, max(0, spec.steps - step - 1)), None  # steady-state rate after a warm-up
        # rank 0 prints a line at least every 30 s (Ray sends a worker's stdout to the driver and the job's log),
        # or, where the driver draws progress bars (a terminal), posts a tick every second instead
        post = poster() if rank == 0 else None
        ticker, line_losses, first_step = Ticker(BAR_EVERY_S if post else None), [], step
        while step < spec.steps:
            rows = global_batch(base_seed, step, spec.batch_size, len(keys))
            t, noise, y = step_draws(scheduler, base_seed, step, image_shape, spec.batch_size,
                                     None if labels is None else labels[rows], cond.get("p_uncond", 0.0),
                                     cond.get("num_classes"))
            x0 = diffusion.images_to_tensor(images[rows[slots]]).to(device)
            loss = diffusion.diffusion_loss(engine, x0, t[slots].to(device), noise[slots].to(device), scheduler,
                                            None if y is None else y[slots].to(device))
            engine.backward(loss)
            engine.step()
            if ema is not None:
                ema.update(engine.module)
            step += 1
            seen += x0.shape[0]
            if step == warm_at:
                t_warm = time.perf_counter()
            if step == spec.steps:
                t_end = time.perf_counter()
            _maybe_fail(step, config.get("fail_at_step"), model_url, so)
            losses.append(loss.detach().float())
            if rank == 0:
                line_losses.append(losses[-1])
                if ticker.due(final=step == spec.steps):
                    rate, mean_loss = (step - first_step) / (time.perf_counter() - t0), float(torch.stack(line_losses).mean())
                    if post is not None:
                        post(tick(f"train {model_url}", step, spec.steps, "steps", rate, mean_loss))
                    else:
                        # stdout itself: Ray Train replaces print() in its workers by a logger that also
                        # tees to a wrapped stdout, which printed every line twice
                        sys.stdout.write(train_line(model_url, step, spec.steps, mean_loss, rate) + "\n")
                        sys.stdout.flush()
                    line_losses = []
            if step % spec.log_every == 0 or step == spec.steps:
                mean = torch.stack(losses).mean()
                dist.all_reduce(mean)
                curve.append((step, float(mean) / world))
                ray.train.report({"step": step, "loss": curve[-1][1], "lr": lr_sched.get_last_lr()[0],
                                  "samples_per_s": seen * world / (time.perf_counter() - t0),
                                  "resumed_from": resumed_from})
                losses = []
            if step == spec.steps or (spec.checkpoint_every and step % spec.checkpoint_every == 0):
                _save_checkpoint(engine, step, {"step": step, "ema": ema.state_dict() if ema else None,
                                                "grad_scaler": _grad_scaler_state(engine)},
                                 model_url, work, rank, so, config["spec_hash"])

        # -- the final model, in diffusers format, committed last
        timeline["steps_done"] = time.time()
        if rank == 0:
            final = ema.copy_to(engine.module) if ema is not None else engine.module
            local = os.path.join(work, "final")
            diffusion.save_model(final, scheduler, local)
            directories.upload_directory(local, model_url, extra={"kind": "diffusers-model", "steps": step,
                                                                  "preset": spec.preset, "spec_hash": config["spec_hash"],
                                                                  "loss_curve": curve, "resumed_from": resumed_from,
                                                                  "timeline": timeline,
                                                                  "steps_per_s": (step - warm_at) / (t_end - t_warm)
                                                                  if t_warm and t_end and step > warm_at else None},
                                         storage_options=so)
        dist.barrier()


def batch_labels(metas, num_classes: int, train_url: str):
    """The class ids (N,) int64 of samples given by their lineage; a DataError naming the set when one has none."""
    from collapse.classes import check_labels
    try:
        return np.asarray(check_labels([m.get("label") for m in metas], num_classes, f"training set {train_url}"),
                          dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{e} (model.num_classes={num_classes}: the run is class-conditional)") from None


@contextlib.contextmanager
def _spool_errors(what: str):
    """A full local spool, named. torch.save reports it as a RuntimeError of its zip writer
    ("unexpected pos ..."), not as ENOSPC, so a failure on a spool left with < 16 MB counts too."""
    import errno
    import shutil
    try:
        yield
    except Exception as e:
        enospc = isinstance(e, OSError) and e.errno == errno.ENOSPC
        if enospc or shutil.disk_usage(storage.spool_dir()).free < 16 * 2 ** 20:
            raise storage.full_spool(e, what) from e
        raise


def _quiet_reports() -> None:
    """Ray Train 2.60 logs "Reporting training result N: ..." at INFO for every ``report`` of every
    worker, on a logger named after its file's *path* (``logging.getLogger(__file__)``), so that
    ``LoggingConfig(log_level=...)``, which sets the ``ray.train`` loggers, does not reach it. Our
    stage prints the loss curve itself."""
    import logging

    from ray.train.v2._internal.execution import context
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _save_checkpoint(engine, step, client_state, model_url, work, rank, so, spec_hash) -> None:
    """All ranks save (collective), upload their own files; rank 0 commits the checkpoint."""
    import torch.distributed as dist
    tag = f"step-{step:08d}"
    local = os.path.join(work, "ckpt", tag)
    engine.save_checkpoint(os.path.join(work, "ckpt"), tag=tag, client_state=client_state)
    records = directories.upload_files(local, storage.join(model_url, CHECKPOINTS, tag), so)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, records)
    if rank == 0:
        url = storage.join(model_url, CHECKPOINTS, tag)
        directories.commit_directory(url, [r for rs in gathered for r in rs], {"tag": tag, "step": step}, so)
        manifest.write_manifest(storage.join(model_url, CHECKPOINTS),
                          {"kind": "checkpoints", "extra": {"tag": tag, "step": step, "spec_hash": spec_hash,
                                                             "world_size": dist.get_world_size()}}, so)
    dist.barrier()


def train_model(train_url: str, model_url: str, spec: TrainSpec, *, num_workers: int = 1, use_gpu: bool = False,
                cpus_per_worker: float = 1.0, conditional: dict | None = None, max_failures: int = 0,
                fail_at_step: int | None = None, storage_options: dict | None = None, progress=print) -> dict:
    """Train a model on the set at ``train_url`` into ``model_url``; a no-op when it is already there.

    ``conditional``: ``{"num_classes": K, "p_uncond": p}`` trains a class-conditional model on the set's
    labels (classifier-free guidance training); None an unconditional one.
    ``max_failures``: worker-group restarts Ray Train may make; each resumes from the latest
    checkpoint. ``fail_at_step`` kills a worker once at that step (to test exactly that).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from collapse.diffusion.presets import BATCH_ORDER
    spec.validate(num_workers)
    if spec.precision == "fp16" and not use_gpu:
        raise ValueError(FP16_ON_CPU)
    spec_hash = manifest.config_hash({"spec": dataclasses.asdict(spec), "train_url": train_url,
                                "conditional": conditional or False,  # False: the hash of unconditional models
                                "batch_order": BATCH_ORDER})
    done = manifest.try_read_manifest(model_url, storage_options)
    if done is not None and done.get("extra", {}).get("spec_hash") == spec_hash:
        progress(f"train: {model_url} is already trained ({done['extra']['steps']} steps); skipping")
        return done
    if done is not None:
        raise DataError(f"{model_url!r} holds a model trained with other settings (or by a collapse older than the "
                        f"batch order {BATCH_ORDER}, whose batches depended on the worker count); choose another "
                        "URL, or another run directory for a run")
    latest = latest_checkpoint(model_url, storage_options)
    if latest is not None and latest["extra"].get("spec_hash") != spec_hash:
        raise DataError(f"{model_url!r} holds checkpoints of a training with other settings; choose another URL")
    if latest is not None and latest["extra"].get("world_size", num_workers) != num_workers:
        w, at = latest["extra"]["world_size"], latest["extra"]["step"]
        raise DataError(f"{model_url}: the training stopped at step {at} of {spec.steps} with a checkpoint of {w} "
                        f"worker(s) (DeepSpeed ZeRO optimizer shards per worker), and this one has {num_workers}: "
                        f"resume it with resources.train_workers={w}, or delete {storage.join(model_url, CHECKPOINTS)} "
                        f"to train it again from step 0 on {num_workers} (the same experiment: batches do not "
                        f"depend on the worker count)")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": dataclasses.asdict(spec), "spec_hash": spec_hash, "train_url": train_url,
                           "model_url": model_url, "storage_options": storage_options, "conditional": conditional,
                           "fail_at_step": fail_at_step, "threads": max(1, int(cpus_per_worker))},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker,
                                                                     **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(name=f"train-{spec_hash}", storage_path=tempfile.gettempdir() + "/collapse-ray",
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       # our stage prints the loss curve; Ray Train's per-report INFO lines are noise
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")))
    t0 = time.time()
    trainer.fit()
    t1 = time.time()
    done = manifest.read_manifest(model_url, storage_options)
    curve, tl = done["extra"]["loss_curve"], done["extra"].get("timeline") or {}
    split = startup_split(t0, t1, tl)
    progress(f"train: {spec.steps} steps on {num_workers} worker(s) in {t1 - t0:.0f} s (" +
             ", ".join(f"{k} {v:.1f} s" for k, v in split.items()) + ")" +
             (f", loss {curve[0][1]:.4f} -> {curve[-1][1]:.4f}" if curve else ""))
    return done


def startup_split(fit_called: float, fit_returned: float, timeline: dict) -> dict:
    """Where a training stage's wall time went (seconds): Ray Train starting the worker group, the
    worker's imports and set-up (process group, model, DeepSpeed engine), the steps (with their
    checkpoints), and saving the model and shutting the group down. Empty without a timeline (a
    model trained by an older version)."""
    keys = ("worker_started", "initialized", "steps_done")
    if not all(k in timeline for k in keys):
        return {}
    a, b, c = (timeline[k] for k in keys)
    return {"worker group start": a - fit_called, "worker set-up": b - a, "steps": c - b,
            "save and shutdown": fit_returned - c}
