"""Deployments off this machine: prefect.cluster.yaml's deployments rendered against the Kubernetes and Docker
work-pool templates (deploy/work-pools/) with Prefect's own machinery: the server validates the base job templates,
`BaseJobConfiguration.from_template_and_values` fills them with each deployment's job variables (what a worker does
before it starts a flow run), and bucket credentials come from a Prefect Secret block."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGE, SHA = "registry.example.com/ml/smartedit", "abc1234"


def _deployments(monkeypatch) -> dict[str, dict]:
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("SMARTEDIT_IMAGE", IMAGE)
    monkeypatch.setenv("SMARTEDIT_PROFILE", "production")
    spec = yaml.safe_load((ROOT / "prefect.cluster.yaml").read_text())
    out = {}
    for dep in spec["deployments"]:
        # `prefect deploy`: `{{ $VAR }}` from the environment first, then the build steps' outputs
        dep = apply_values(dep, dict(os.environ), remove_notset=False)
        out[dep["name"]] = apply_values(dep, {"git-sha": {"stdout": SHA}}, remove_notset=False)
    return out


def _template(kind: str) -> dict:
    return json.loads((ROOT / "deploy" / "work-pools" / f"{kind}.json").read_text())


def _job_classes():
    # The fields prefect-kubernetes' / prefect-docker's job configurations declare (those packages are only
    # needed on the worker); rendering itself is prefect core's.
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesJob(BaseJobConfiguration):
        namespace: str
        job_manifest: dict[str, Any]
        cluster_config: Any = None
        job_watch_timeout_seconds: int | None = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    class DockerJob(BaseJobConfiguration):
        image: str
        image_pull_policy: str | None = None
        networks: list[str] = []
        network_mode: str | None = None
        auto_remove: bool = False
        volumes: list[str] = []
        stream_output: bool = True
        mem_limit: str | None = None
        privileged: bool = False
        container_create_kwargs: dict[str, Any] | None = None

    return KubernetesJob, DockerJob


async def _render(kind: str, job_variables: dict) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    k8s, docker = _job_classes()
    async with get_client() as client:
        pool = f"test-{kind}"
        try:
            await client.read_work_pool(pool)
        except Exception:
            # the server validates the template: every placeholder must be a declared variable
            await client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=_template(kind)))
        stored = (await client.read_work_pool(pool)).base_job_template
        cls = k8s if kind == "kubernetes" else docker
        return await cls.from_template_and_values(stored, job_variables, client=client)


def test_every_flow_deploys_to_a_cluster_pool_with_the_built_image(monkeypatch):
    local = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    cluster = _deployments(monkeypatch)
    assert local - {"scheduled-retrain"} <= set(cluster)
    for name, dep in cluster.items():
        gpu = dep["work_pool"]["name"] == "cluster-gpu"
        assert dep["work_pool"]["job_variables"]["image"] == f"{IMAGE}:{'cuda' if gpu else 'cpu'}-{SHA}", name
        assert dep["work_pool"]["job_variables"]["gpu_count"] == (1 if gpu else 0), name
    assert cluster["train"]["triggers"][0]["parameters"]["profile"] == "production"


def test_kubernetes_job_has_gpu_shm_image_and_env(prefect_harness, monkeypatch):
    deps = _deployments(monkeypatch)
    job = asyncio.run(_render("kubernetes", deps["train"]["work_pool"]["job_variables"]))
    pod = job.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{IMAGE}:cuda-{SHA}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16G"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["envFrom"] == [{"secretRef": {"name": "smartedit-bucket", "optional": True}}]
    assert job.env["SMARTEDIT_PROFILE"] == "production" and job.env["SMARTEDIT_MODELS"] == "/models"
    assert job.namespace == "smartedit" and job.job_manifest["metadata"]["namespace"] == "smartedit"

    cpu = asyncio.run(_render("kubernetes", deps["convert-edit"]["work_pool"]["job_variables"]))
    (container,) = cpu.job_manifest["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{IMAGE}:cpu-{SHA}" and container["resources"]["limits"]["nvidia.com/gpu"] == 0


def test_docker_job_renders_to_a_valid_host_config_with_secret_from_a_block(prefect_harness, monkeypatch):
    import docker
    from prefect.blocks.system import Secret

    Secret(value="s3cr3t-from-block").save("smartedit-s3-secret", overwrite=True)
    variables = dict(_deployments(monkeypatch)["train"]["work_pool"]["job_variables"])
    variables["env"] = {**variables["env"], "AWS_SECRET_ACCESS_KEY": "{{ prefect.blocks.secret.smartedit-s3-secret }}"}
    job = asyncio.run(_render("docker", variables))
    assert job.image == f"{IMAGE}:cuda-{SHA}"
    assert job.env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-from-block"  # never written in prefect.yaml or a manifest
    kwargs = job.container_create_kwargs
    # docker-py builds the Engine API host config from them, as prefect-docker's containers.create does
    requests = [docker.types.DeviceRequest(**r) for r in kwargs["device_requests"]]
    host = docker.types.HostConfig(version="1.44", shm_size=kwargs["shm_size"], device_requests=requests,
                                   binds=job.volumes)
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                       "Options": {}}]
    assert host["ShmSize"] == 16 * 1024**3
    assert "/srv/smartedit/models:/models:ro" in host["Binds"]


def test_dockerfile_pins_match_the_venv():
    text = (ROOT / "Dockerfile").read_text()
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    assert f"ARG TORCH=torch=={pins['torch']}" in text
    assert re.search(r"TORCHVISION := (torchvision==\S+)", (ROOT / "Makefile").read_text()).group(1) in text
    assert "PIP_CONSTRAINT=constraints.txt pip install" in text
    # torch goes in before the constrained install (a looser spec would resolve another build)
    assert text.index('pip install "$TORCH"') < text.index("PIP_CONSTRAINT=constraints.txt pip install -e")


def _docker_daemon() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.skipif(not _docker_daemon(), reason="no docker daemon on this machine")
def test_docker_build_cpu_image():
    # SMARTEDIT_DOCKER_BUILD_ARGS: extra `docker build` options where Docker Hub or the PyTorch index is out of
    # reach, e.g. the base image and torch source that bench/docker_build.sh makes
    extra = shlex.split(os.environ.get("SMARTEDIT_DOCKER_BUILD_ARGS", ""))
    subprocess.run(["docker", "build", "-t", "smartedit:test-cpu", "--build-arg", "VARIANT=cpu", *extra, str(ROOT)],
                   check=True, timeout=3600)
    out = subprocess.run(["docker", "run", "--rm", "smartedit:test-cpu", "python", "-c",
                          "import torch, flows.train; print(torch.__version__)"],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip().startswith("2.13.0")


def test_kubernetes_train_job_spans_nodes_as_an_indexed_job(prefect_harness, monkeypatch):
    variables = {**_deployments(monkeypatch)["train"]["work_pool"]["job_variables"], "nnodes": 2, "gpu_count": 8}
    job = asyncio.run(_render("kubernetes", variables))
    spec = job.job_manifest["spec"]
    # one pod per node; pod i's JOB_COMPLETION_INDEX is the flow's node rank (flows/train.py reads it)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 2, 2, 0)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8  # per node
    # node 0's pod <job>-0 resolves through the headless Service that selects every flow-run pod
    service = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "rendezvous-service.yaml").read_text())
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    env = {e["name"]: e for e in container["env"]}
    job_name = env["SMARTEDIT_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert job_name == "metadata.labels['batch.kubernetes.io/job-name']"
    endpoint = env["SMARTEDIT_RDZV_ENDPOINT"]["value"]
    assert endpoint == f"$(SMARTEDIT_JOB_NAME)-0.{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    # Kubernetes expands $(VAR) only from variables defined before it
    names = [e["name"] for e in container["env"]]
    assert names.index("SMARTEDIT_JOB_NAME") < names.index("SMARTEDIT_RDZV_ENDPOINT")

    # only pod 0 executes the flow run (the worker's command, here a stand-in); pods > 0 run the node agent, which
    # joins that flow run (tests/test_train_multinode.py runs both); every pod gets SMARTEDIT_NNODES = the pod count
    wrapper = container["command"]
    assert wrapper[:2] == ["/bin/sh", "-c"]
    env_path = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": str(ROOT)}
    env_path.pop("PREFECT__FLOW_RUN_ID", None)
    pod0 = subprocess.run([*wrapper, sys.executable, "-c", "import os; print('FLOW-RUN', os.environ['SMARTEDIT_NNODES'])"],
                          env={**env_path, "JOB_COMPLETION_INDEX": "0"}, capture_output=True, text=True, cwd=ROOT)
    assert (pod0.returncode, pod0.stdout) == (0, "FLOW-RUN 2\n"), pod0
    pod1 = subprocess.run([*wrapper, "false"], env={**env_path, "JOB_COMPLETION_INDEX": "1"}, capture_output=True,
                          text=True, cwd=ROOT)
    assert pod1.returncode != 0 and "train_node_agent: needs PREFECT__FLOW_RUN_ID" in pod1.stderr, pod1
    # the flow takes nnodes from the job and refuses a parameter that disagrees with it
    from flows.train import launch_topology

    monkeypatch.setenv("SMARTEDIT_NNODES", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert launch_topology(None, None, "h:1") == (2, 1, "h:1")
    with pytest.raises(ValueError, match=r"^train: parameter nnodes=1 but this job runs SMARTEDIT_NNODES=2 nodes"):
        launch_topology(1, None, "h:1")

    single = asyncio.run(_render("kubernetes", _deployments(monkeypatch)["convert-edit"]["work_pool"]["job_variables"]))
    assert (single.job_manifest["spec"]["completions"], single.job_manifest["spec"]["parallelism"]) == (1, 1)
