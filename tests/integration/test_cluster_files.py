"""The deployment files under cluster/ agree with each other and with the project (no Ray is started).

Checks what a typo would otherwise only reveal on a cluster: every YAML parses, the RayJob's entrypoint is a
valid `motioncrafter run`, the config it mounts is cluster/cluster.toml and loads, the Ray and torch versions
are the ones the project is tested with, and the S3 secret and config map are named the same everywhere.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SECRET = "motioncrafter-s3"
CONFIG_MAP = "motioncrafter-config"
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def _kind(name: str, kind: str) -> dict:
    (doc,) = [d for d in _docs(name) if d.get("kind") == kind]
    return doc


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dependency(name: str) -> Requirement:
    (req,) = [r for r in map(Requirement, _pyproject()["project"]["dependencies"]) if r.name == name]
    return req


def _makefile_torch() -> str:
    pins = set(re.findall(r"torch==([0-9][\w.+]*)", (ROOT / "Makefile").read_text()))
    assert len(pins) == 1, f"expected one torch pin in the Makefile, got {pins}"
    return pins.pop()


def _ray_cluster_specs() -> dict[str, dict]:
    return {"rayjob.yaml": _kind("kuberay/rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"],
            "raycluster.yaml": _kind("kuberay/raycluster.yaml", "RayCluster")["spec"]}


def _pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def _dockerfile_from() -> str:
    lines = [ln.split() for ln in (CLUSTER / "Dockerfile").read_text().splitlines() if ln.strip().upper().startswith("FROM ")]
    assert len(lines) == 1, "expected one FROM line"
    return lines[0][1]


def test_every_yaml_parses():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAML_FILES}
    assert {"aws.yaml", "runtime_env.yaml", "kuberay/rayjob.yaml", "kuberay/raycluster.yaml"} <= names
    for path in YAML_FILES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_rayjob_entrypoint_is_a_valid_run():
    from pipelines.run import build_parser

    job = _kind("kuberay/rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["motioncrafter", "run"]
    args = build_parser().parse_args(argv[2:])
    assert args.manifest == "s3://my-bucket/manifests/clips.parquet"
    assert args.output == "s3://my-bucket/runs"
    assert args.run_id == "library-v1"
    # --config names the cluster.toml key of the config map, where every pod mounts it
    mount_dir, _, key = args.config.rpartition("/")
    for spec in _ray_cluster_specs().values():
        for pod in _pod_specs(spec):
            volumes = {v["name"]: v for v in pod["volumes"]}
            (container,) = pod["containers"]
            mounts = [m for m in container["volumeMounts"] if m["mountPath"] == mount_dir]
            assert len(mounts) == 1, f"{container['name']} does not mount {mount_dir}"
            assert volumes[mounts[0]["name"]]["configMap"]["name"] == CONFIG_MAP
    assert key in _kind("kuberay/rayjob.yaml", "ConfigMap")["data"]


@pytest.mark.parametrize("name", ["kuberay/rayjob.yaml", "kuberay/raycluster.yaml"])
def test_config_map_is_cluster_toml(name):
    from motioncrafter.config import load_config

    cm = _kind(name, "ConfigMap")
    assert cm["metadata"]["name"] == CONFIG_MAP
    assert cm["data"]["cluster.toml"] == (CLUSTER / "cluster.toml").read_text()
    cfg = load_config(CLUSTER / "cluster.toml")
    assert cfg.pipeline.ray_address == "auto"
    assert (cfg.tune.engine, cfg.tune.zero_stage) == ("deepspeed", 2)


def test_gpu_capacity_fits_the_gangs():
    from motioncrafter.config import load_config

    pc = load_config(CLUSTER / "cluster.toml").pipeline
    needed = pc.num_gangs * pc.workers_per_gang
    for name, spec in _ray_cluster_specs().items():
        (group,) = spec["workerGroupSpecs"]
        (container,) = group["template"]["spec"]["containers"]
        res = container["resources"]
        assert int(res["limits"]["nvidia.com/gpu"]) == 1 == pc.gpus_per_worker, name
        assert float(res["limits"]["cpu"]) >= pc.cpus_per_worker, name
        assert group["maxReplicas"] >= needed and group["replicas"] >= needed, name
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {}), f"{name}: the head is a CPU node"
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    worker = aws["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert worker["resources"]["GPU"] * worker["max_workers"] >= needed
    assert worker["resources"]["CPU"] >= pc.cpus_per_worker


def test_both_kuberay_files_have_the_same_groups():
    specs = _ray_cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"]
    assert _kind("kuberay/rayjob.yaml", "ConfigMap") == _kind("kuberay/raycluster.yaml", "ConfigMap")


def test_images_are_the_built_one():
    version = _pyproject()["project"]["version"]
    cuda = _dockerfile_from().rpartition("-")[2]  # ...-cu121
    for name, spec in _ray_cluster_specs().items():
        for pod in _pod_specs(spec):
            assert [c["image"] for c in pod["containers"]] == [f"motioncrafter:{version}-{cuda}"], name
    assert f"download.pytorch.org/whl/{cuda}" in (CLUSTER / "Dockerfile").read_text()
    assert any(f"whl/{cuda}" in cmd for cmd in yaml.safe_load((CLUSTER / "aws.yaml").read_text())["setup_commands"])


def test_ray_versions_match_the_installed_ray():
    import ray

    bound = _dependency("ray").specifier
    installed = ray.__version__
    assert Version(installed) in bound, f"installed ray {installed} is outside pyproject's {bound}"
    image = _dockerfile_from()
    assert image.startswith("rayproject/ray:")
    assert image.split(":")[1].split("-")[0] == installed
    for name, spec in _ray_cluster_specs().items():
        assert spec["rayVersion"] == installed, name
    aws_pins = [m for cmd in yaml.safe_load((CLUSTER / "aws.yaml").read_text())["setup_commands"]
                for m in re.findall(r"ray(?:\[[\w,]+\])?==([0-9][\w.]*)", cmd)]
    assert aws_pins == [installed]


def test_torch_versions_match_the_makefile_pin():
    pin = _makefile_torch()
    assert Version(pin) in _dependency("torch").specifier
    docker = re.findall(r"torch==([0-9][\w.+]*)", (CLUSTER / "Dockerfile").read_text())
    aws = [m for cmd in yaml.safe_load((CLUSTER / "aws.yaml").read_text())["setup_commands"]
           for m in re.findall(r"torch==([0-9][\w.+]*)", cmd)]
    assert docker == [pin]
    assert aws == [pin]


def test_python_of_the_image_is_supported():
    tag = _dockerfile_from().split(":")[1]
    (py,) = re.findall(r"-py(\d)(\d+)", tag)
    from packaging.specifiers import SpecifierSet

    assert Version(".".join(py)) in SpecifierSet(_pyproject()["project"]["requires-python"])


def test_secret_is_named_the_same_everywhere():
    for name, spec in _ray_cluster_specs().items():
        for pod in _pod_specs(spec):
            for container in pod["containers"]:
                refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})}
                assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}, name
                assert {r["name"] for r in refs.values()} == {SECRET}, name
                assert all(r["key"] == env for env, r in refs.items()), name
                assert refs["AWS_ENDPOINT_URL"].get("optional") is True
                assert not refs["AWS_ACCESS_KEY_ID"].get("optional") and not refs["AWS_SECRET_ACCESS_KEY"].get("optional")
    # every secret name mentioned in any cluster file (docs and comments included) is this one
    for path in [*YAML_FILES, CLUSTER / "README.md"]:
        for found in re.findall(r"secret generic ([\w.-]+)|secretKeyRef: \{name: ([\w.-]+)", path.read_text()):
            assert SECRET in found, path


def test_runtime_env_excludes_local_state():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"env_vars", "excludes", "pip", "py_modules", "working_dir"}
    assert {".venv", "runs", ".pretrain", ".git"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "runtime_env env_vars must be strings"
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert aws["provider"] == {**aws["provider"], "type": "aws", "region": "us-west-2"}
    assert aws["available_node_types"][aws["head_node_type"]]["node_config"]["InstanceType"] == "m5.2xlarge"
    assert aws["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert aws["file_mounts"] == {"~/motioncrafter": "."}
    assert aws["setup_commands"][-2:] == [f"pip install torch=={_makefile_torch()} --index-url https://download.pytorch.org/whl/cu121",
                                          "pip install -e ~/motioncrafter"]
