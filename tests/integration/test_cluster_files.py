"""The deployment files under cluster/ agree with each other and with the project (no Ray is started).

Checks what a typo would otherwise only reveal on a cluster: every YAML parses, the RayJob's entrypoint is a
valid `motioncrafter run`, the config it mounts is cluster/cluster.toml and loads, the Ray and torch versions
are the ones the project is tested with, and the S3 secret and config map are named the same everywhere.
"""

from __future__ import annotations

import copy
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


def _images() -> dict:
    return tomllib.loads((CLUSTER / "images.toml").read_text())


def test_the_pairing_table_is_a_published_combination():
    t = _images()
    # a CUDA line both PyTorch's wheel index and Ray's images publish (sources in images.toml)
    assert t["cuda"] in t["torch_cuda_published"] and t["cuda"] in t["ray_cuda_published"]
    assert t["base_image"] == f"rayproject/ray:{t['ray']}-py{t['python'].replace('.', '')}-{t['cuda']}"
    assert t["torch_index"] == f"https://download.pytorch.org/whl/{t['cuda']}"
    assert t["image"] == f"motioncrafter:{_pyproject()['project']['version']}-{t['cuda']}"
    assert t["torch"] == _makefile_torch() and Version(t["torch"]) in _dependency("torch").specifier


def test_dockerfile_follows_the_table_and_has_no_entrypoint():
    t = _images()
    text = (CLUSTER / "Dockerfile").read_text()
    assert _dockerfile_from() == t["base_image"]
    assert re.findall(r"torch==([0-9][\w.+]*) --index-url (\S+)", text) == [(t["torch"], t["torch_index"])]
    assert f"-t {t['image']} " in text
    instructions = [ln.split()[0].upper() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "#"))]
    # Ray's docker mode runs `<image> bash`: an ENTRYPOINT would turn that into `<entrypoint> bash`
    assert "ENTRYPOINT" not in instructions and "CMD" not in instructions
    # the dependency layer comes before the source is copied in
    copies = [ln for ln in text.splitlines() if ln.startswith("COPY")]
    assert copies[0].split()[-2:] == ["pyproject.toml", "./"] and copies[-1].split()[-2:] == [".", "."]
    assert text.index("-r /tmp/requirements.txt") < text.index(copies[-1]) < text.index("--no-deps .")


def test_every_node_runs_the_built_image():
    image = _images()["image"]
    for name, spec in _ray_cluster_specs().items():
        for pod in _pod_specs(spec):
            assert [c["image"] for c in pod["containers"]] == [image], name
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert aws["docker"]["image"] == image
    assert not any("docker" in node for node in aws["available_node_types"].values())  # no per-node override
    assert aws["setup_commands"] == []  # the image has everything


def test_aws_nodes_start_a_current_gpu_ami_that_fits_the_pods():
    from ray.autoscaler._private.aws.config import DEFAULT_AMI
    from ray.autoscaler._private.util import prepare_config, validate_config

    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(aws)))  # what `ray up` checks: ray-schema.json, defaults filled in
    for name, node in aws["available_node_types"].items():
        ami = node["node_config"].get("ImageId", "")
        # without one Ray falls back to its default: an Ubuntu 18.04 Deep Learning AMI
        assert ami and ami.lower() != "latest_dlami" and ami not in DEFAULT_AMI.values(), name
        assert ami.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/") and "ubuntu-22.04" in ami, name
    # vCPUs and GiB of the instance types used here (AWS's instance type tables)
    sizes = {"m5.2xlarge": (8, 32), "g5.xlarge": (4, 16), "g5.2xlarge": (8, 32)}
    worker = aws["available_node_types"]["gpu_worker"]
    cpus, gib = sizes[worker["node_config"]["InstanceType"]]
    spec = _ray_cluster_specs()["rayjob.yaml"]
    (container,) = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    pod = container["resources"]["requests"]
    assert gib >= int(pod["memory"].removesuffix("Gi")) and cpus >= float(pod["cpu"])
    assert worker["resources"]["CPU"] <= cpus
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    cpus, gib = sizes[aws["available_node_types"][aws["head_node_type"]]["node_config"]["InstanceType"]]
    assert gib >= int(head["memory"].removesuffix("Gi")) and cpus >= float(head["cpu"])


def test_rayjob_frees_the_gpus_when_the_job_ends_and_retries_with_the_same_run_id():
    spec = _kind("kuberay/rayjob.yaml", "RayJob")["spec"]
    # KubeRay: deletion rules exclude shutdownAfterJobFinishes and the global TTL (the CRD's validation)
    assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec
    rules = spec["deletionStrategy"]["deletionRules"]
    policies = {"DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"}
    assert all(set(r) == {"policy", "condition"} and r["policy"] in policies for r in rules)
    by_status: dict[str, dict[str, int]] = {}
    for r in rules:
        c = r["condition"]
        assert ("jobStatus" in c) != ("jobDeploymentStatus" in c) and c.get("ttlSeconds", 0) >= 0
        by_status.setdefault(c.get("jobStatus") or c["jobDeploymentStatus"], {})[r["policy"]] = c.get("ttlSeconds", 0)
    for status in ("SUCCEEDED", "FAILED"):
        assert by_status[status]["DeleteWorkers"] == 0  # the GPU pods go at once
        assert 0 < by_status[status]["DeleteCluster"] <= 900  # the head soon after (its logs readable meanwhile)
    assert "DeleteCluster" in by_status["Failed"]  # a job that never started does not keep the cluster either
    assert spec["backoffLimit"] >= 1
    assert "--run-id" in shlex.split(spec["entrypoint"])  # so a retry is a resume, not a new run


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
    assert _images()["ray"] == installed


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
    assert aws["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] == "g5.2xlarge"
