"""The deployment files in infra/deploy/: each parses, has what its system requires, and runs the
same command `make submit` uses (infra/jobs.py entrypoint())."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from infra.jobs import entrypoint
from pipelines.cli import parser
from pipelines.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "infra/deploy"
IMAGE_DIR = re.search(r"^WORKDIR (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)


def load(name):
    return yaml.safe_load((DEPLOY / name).read_text())


def containers(pod_template):
    cs = pod_template["spec"]["containers"]
    assert cs, "a pod template without containers"
    return cs


def check_ray_cluster_spec(spec, where):
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion is not the project's Ray"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", f"{where}: dashboard not reachable"
    ports = {p["containerPort"] for p in containers(head["template"])[0]["ports"]}
    assert {6379, 8265} <= ports, f"{where}: head must expose GCS 6379 and the Jobs API 8265"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu-workers", "gpu-workers"} <= set(groups), where
    for name, g in groups.items():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {name} replicas"
        assert "rayStartParams" in g, f"{where}: {name} needs rayStartParams (may be empty)"
        for c in containers(g["template"]):
            assert c["image"] and c["resources"]["limits"], f"{where}: {name} needs an image and limits"
    gpu = containers(groups["gpu-workers"]["template"])[0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    cpu = containers(groups["cpu-workers"]["template"])[0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]


def test_kuberay_raycluster():
    doc = load("kuberay-raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    assert doc["metadata"]["name"]
    check_ray_cluster_spec(doc["spec"], "kuberay-raycluster.yaml")


def test_a_submitted_job_runs_the_same_command_with_its_reruns():
    # `make submit ARGS="--set k=v --rerun pretrain"`: the job's command is the local `run` with both
    sub = parser().parse_args(
        [
            "submit",
            "configs/clip_small.yaml",
            "--address",
            "http://h:8265",
            "--workflow-id",
            "w1",
            "--set",
            "train.epochs=2",
            "--rerun",
            "pretrain",
            "--rerun",
            "eval",
        ]
    )
    argv = shlex.split(entrypoint(sub.recipe, sub.workflow_id, sub.set, sub.rerun))
    run = parser().parse_args(argv[3:])
    assert (run.cmd, run.recipe, run.workflow_id, run.set, run.rerun) == (
        "run",
        "configs/clip_small.yaml",
        "w1",
        ["train.epochs=2"],
        ["pretrain", "eval"],
    )


def test_kuberay_rayjob_runs_the_submit_entrypoint():
    doc = load("kuberay-rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    check_ray_cluster_spec(spec["rayClusterSpec"], "kuberay-rayjob.yaml")
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.cli"]
    args = parser().parse_args(argv[3:])
    assert args.cmd == "run"
    assert spec["entrypoint"] == entrypoint(args.recipe, args.workflow_id, args.set)
    load_recipe(ROOT / args.recipe, args.set)  # the recipe exists and the overrides are valid
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"] == IMAGE_DIR  # where the image has the project (recipe paths are relative)
    assert spec["shutdownAfterJobFinishes"] is True


def test_cronjob_runs_make_submits_command():
    doc = load("cronjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    fields = doc["spec"]["schedule"].split()
    assert len(fields) == 5, "a cron schedule has 5 fields"
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"  # never two runs of one workflow at once
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]
    c = containers(pod)[0]
    assert c["workingDir"] == IMAGE_DIR
    cmd = shlex.split(c["args"][0].replace("$(date -u +%Y%m%d)", "20261125"))
    assert cmd[:3] == ["python", "-m", "pipelines.cli"]
    args = parser().parse_args(cmd[3:])
    assert args.cmd == "submit" and args.address.endswith(":8265")
    assert args.workflow_id == "clip-nightly-20261125"
    load_recipe(ROOT / args.recipe, args.set)
    # the Makefile's `make submit` with the same settings prints the same command
    sets = " ".join(f"--set {s}" for s in args.set)
    dry = (
        subprocess.run(
            [
                "make",
                "-s",
                "-n",
                "submit",
                f"ADDRESS={args.address}",
                f"RECIPE={args.recipe}",
                f"WORKFLOW={args.workflow_id}",
                f"ARGS={sets}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    make_cmd = shlex.split(dry)
    assert make_cmd[0].endswith("python") and make_cmd[1:] == cmd[1:]


def test_ray_cluster_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load("ray-cluster-aws.yaml")
    validate_config(prepare_config(raw))
    assert raw["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert {"cpu_worker", "gpu_worker"} <= set(raw["available_node_types"])
    assert any("--head" in c and "--dashboard-host=0.0.0.0" in c for c in raw["head_start_ray_commands"])
    raw["available_node_types"]["gpu_worker"]["max_wokers"] = 3
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(raw))


def test_images_are_built_from_the_projects_ray():
    base = re.search(r"^ARG BASE=rayproject/ray:(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)
    assert base.startswith(ray.__version__ + "-")
