"""The deployment files under infra/: they parse, and carry the fields that we rely on.

Nothing here can run them (no Kubernetes, AWS or Docker engine in CI): these checks catch a
misspelt field, a Ray version that drifted from pyproject.toml, an entrypoint that `collapse run`
would refuse, a secret in a runtime env, or a runtime env key that would clash with connect().
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cluster.runtime import WORKER_ENV

INFRA = Path(__file__).resolve().parents[2] / "infra"
REPO = INFRA.parent

# Field names from KubeRay's ray.io/v1 API reference (https://ray-project.github.io/kuberay/reference/api/).
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
RUNTIME_ENV_FIELDS = {"working_dir", "excludes", "env_vars", "py_modules", "pip", "uv", "conda", "config"}
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY")


def _load(rel: str):
    return yaml.safe_load((INFRA / rel).read_text())


def _pinned(name: str) -> str:
    m = re.search(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert m, f"{name} is not pinned in pyproject.toml"
    return m.group(1)


def _check_runtime_env(env: dict) -> None:
    from ray.runtime_env import RuntimeEnv

    assert set(env) <= RUNTIME_ENV_FIELDS, set(env) - RUNTIME_ENV_FIELDS
    RuntimeEnv(**env)  # Ray's own type checks (env_vars: Dict[str, str], ...)
    env_vars = env.get("env_vars", {})
    clash = set(env_vars) & set(WORKER_ENV)
    assert not clash, f"set by cluster.runtime.connect() too (a merge conflict fails the job): {clash}"
    assert not [k for k in env_vars if any(w in k.upper() for w in SECRET_WORDS)], \
        "a runtime env is shown in the dashboard: no credentials in it"


def _run_args(entrypoint: str) -> list[str]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["collapse", "run"], argv
    return argv[2:]


@pytest.mark.parametrize("path", sorted(p.relative_to(INFRA).as_posix()
                                        for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml")))
def test_every_yaml_under_infra_parses(path):
    docs = [d for d in yaml.safe_load_all((INFRA / path).read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_rayjob_fields():
    job = _load("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    assert isinstance(spec["backoffLimit"], int) and spec["activeDeadlineSeconds"] > 0
    _check_runtime_env(yaml.safe_load(spec["runtimeEnvYAML"]))

    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC, set(cluster) - RAYCLUSTER_SPEC
    assert cluster["rayVersion"] == _pinned("ray")
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, set(head) - HEAD_GROUP
    pods = [("head", head)]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pods.append((group["groupName"], group))
    images = set()
    for name, group in pods:
        # KubeRay's rayStartParams is a map of strings
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        env = {e["name"]: e for e in container["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # from a Kubernetes secret, never literal
            assert "value" not in env[key] and env[key]["valueFrom"]["secretKeyRef"]["key"] == key, name
    assert len(images) == 1, images
    gpus = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
            for g in cluster["workerGroupSpecs"]]
    assert any(gpus), "no GPU worker group"


def test_rayjob_entrypoint_is_a_valid_collapse_run_that_fits_the_workers():
    from jobs.cli import build_parser
    from jobs.presets import load_config

    spec = _load("kuberay/rayjob.yaml")["spec"]
    args = build_parser().parse_args(["run", *_run_args(spec["entrypoint"])])
    assert args.run_dir.startswith("s3://")
    cfg = load_config(args.config, args.overrides + [f"run.run_dir={args.run_dir}"])
    assert cfg.data.source.startswith("wds:s3://") and "{000000..000049}" in cfg.data.source

    # every actor and Train worker of the run fits in one GPU worker pod, and a training's
    # workers fit in the group
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    pod_cpus, pod_gpus = float(limits["cpu"]), int(limits["nvidia.com/gpu"])
    r = cfg.resources
    for what, cpus, gpus in [("train", r.train_cpus, r.train_gpus), ("sampler", r.sampler_cpus, r.sampler_gpus),
                             ("featurizer", r.featurizer_cpus, r.featurizer_gpus),
                             ("scorer", r.scorer_cpus, r.scorer_gpus)]:
        assert cpus <= pod_cpus and gpus <= pod_gpus, what
    assert r.train_workers * r.train_gpus <= group["maxReplicas"] * pod_gpus


def test_runtime_env_file():
    env = _load("ray/runtime_env.yaml")
    _check_runtime_env(env)
    assert env["working_dir"] == "."
    assert {".venv", ".state", ".git"} <= set(env["excludes"])


def test_cluster_launcher_config_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    config = _load("ray/cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) and t.get("max_workers", 0) > 0
               for t in config["available_node_types"].values()), "no GPU worker type"
    assert config["docker"]["image"] == _load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"][
        "headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


def test_dockerfile():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+$", text, re.M)
    assert "python3.11 -m venv" in text
    assert f"torch=={_pinned('torch')}" in text
    assert re.search(r"pip install '\.(\[[^\]]*\])?'", text)
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) \S+$", text, re.M):
        assert (REPO / src).exists(), src
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is not in the build context"
