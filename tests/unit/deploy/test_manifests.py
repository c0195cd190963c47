"""The deployment material in ``deploy/``: Kubernetes manifests, compose file, systemd units.

Nothing here needs a cluster, Docker or systemd. The Kubernetes manifests are
loaded as kustomize would load them (every file ``kustomization.yaml`` lists)
and validated offline against the schemas ``kubernetes-validate`` bundles;
every ``ferry`` command line in them, in ``compose.yaml`` and in the systemd
units is parsed by Ferry's real CLI parser, so a renamed or missing flag fails
here rather than in a crash-looping pod. When ``kubectl`` (or ``kustomize``) is
installed, the kustomizations are also rendered by it.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from control_plane.declarative import parse_document, resolve_document
from ferry.cli import build_parser
from ferry_shared.listen import parse_host_port, parse_listen_list

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
KUSTOMIZATION = K8S / "kustomization.yaml"
DP_ONLY = DEPLOY / "overlays" / "data-plane-only"
COMPOSE = DEPLOY / "compose.yaml"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "Dockerfile"

#: The oldest Kubernetes the manifests support (gRPC probes are GA since 1.27;
#: docs/deploy.md says 1.30), and the newest schema the installed package bundles.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
FERRY_IMAGE = "ghcr.io/ferry-gateway/ferry"
COMPOSE_FERRY_IMAGE = "ferry:dev"
#: The uid the Dockerfile creates and every Ferry pod runs as.
FERRY_UID = 10001
#: The flags that make a plane listen, by argparse dest.
LISTEN_FLAGS = ("admin_listen", "cluster_listen", "health_listen", "proxy_listen", "status_listen")
COMPONENT = "app.kubernetes.io/component"
NAME = "app.kubernetes.io/name"

Doc = dict[str, Any]


# --------------------------------------------------------------------------- loading


def _yaml_documents(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _kustomization(directory: Path) -> Doc:
    document = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _listed_files() -> list[str]:
    return [str(entry) for entry in _kustomization(K8S).get("resources", [])]


def _rendered() -> list[tuple[str, Doc]]:
    """(file, document) for every document of every file kustomization.yaml lists, in order."""
    return [
        (name, doc)
        for name in _listed_files()
        if (K8S / name).is_file()
        for doc in _yaml_documents(K8S / name)
    ]


DOCUMENTS = _rendered()


def _doc_id(entry: tuple[str, Doc]) -> str:
    name, doc = entry
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _of_kind(kind: str) -> list[Doc]:
    return [doc for _, doc in DOCUMENTS if doc.get("kind") == kind]


def _one(kind: str, name: str) -> Doc:
    found = [doc for doc in _of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name!r}, found {len(found)}"
    return found[0]


def _workloads() -> list[Doc]:
    return _of_kind("Deployment") + _of_kind("StatefulSet")


def _pod_labels(workload: Doc) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _containers(workload: Doc) -> list[Doc]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _ferry_containers() -> list[tuple[Doc, Doc]]:
    return [
        (workload, container)
        for workload in _workloads()
        for container in _containers(workload)
        if container["image"].split(":")[0] == FERRY_IMAGE
    ]


def _ferry_container(component: str) -> tuple[Doc, Doc]:
    found = [(w, c) for w, c in _ferry_containers() if _pod_labels(w).get(COMPONENT) == component]
    assert len(found) == 1, f"expected one Ferry {component} container, found {len(found)}"
    return found[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _container_ports(workload: Doc) -> dict[str | int, int]:
    """Port name and number -> number, for every port a workload's containers declare."""
    ports: dict[str | int, int] = {}
    for container in _containers(workload):
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(autouse=True)
def _no_ferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser takes defaults from FERRY_* variables: start every test without any."""
    for name in list(os.environ):
        if name.startswith("FERRY_"):
            monkeypatch.delenv(name)


def parse_ferry(argv: list[str]) -> argparse.Namespace:
    """Parse ``ferry ARGV`` with the real parser; fail the test (not exit) on a bad flag."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        code = exc.code
    pytest.fail(f"`ferry {shlex.join(argv)}` is refused by ferry's CLI parser "
                f"(exit {code}; its message is in the captured stderr)", pytrace=False)


def _subcommand_parser(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("ferry's parser has no subcommands")


#: Flags that take Kong's listen list (several entries, flags such as ``ssl``).
LIST_FLAGS = ("admin_listen", "proxy_listen")


def _listens(args: argparse.Namespace) -> dict[str, tuple[str, int]]:
    """``dest`` (``dest#i`` for the i-th entry of a listen list past the first) ->
    (host, port) of every listen flag the parsed command has."""
    found: dict[str, tuple[str, int]] = {}
    for dest in LISTEN_FLAGS:
        value = getattr(args, dest, None)
        if not value:
            continue
        if dest in LIST_FLAGS:
            for i, entry in enumerate(parse_listen_list(value)):
                found[dest if i == 0 else f"{dest}#{i}"] = (entry.host, entry.port)
        else:
            found[dest] = parse_host_port(value)
    return found


# --------------------------------------------------------------------------- Kubernetes: files


def test_kustomization_lists_manifest_files_that_exist_and_hold_kubernetes_objects() -> None:
    listed = _listed_files()
    assert listed, "kustomization.yaml lists no resources"
    for name in listed:
        path = K8S / name
        assert path.is_file(), f"kustomization.yaml lists {name}, which does not exist"
        documents = _yaml_documents(path)
        assert documents, f"{name} holds no document"
        for doc in documents:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{name}: {doc!r:.80}"


def test_every_manifest_file_is_listed_in_the_kustomization() -> None:
    listed = set(_listed_files())
    orphans = sorted(
        path.name for path in K8S.glob("*.yaml")
        if path.name != "kustomization.yaml" and path.name not in listed
    )
    assert not orphans, f"not in kustomization.yaml's resources (never applied): {orphans}"
    assert not list(K8S.glob("*.yml")), "use the .yaml extension"


def test_no_object_is_defined_twice() -> None:
    keys = [(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_no_private_key_or_secret_is_committed() -> None:
    assert not _of_kind("Secret"), "Secrets are created with kubectl (docs/deploy.md), not committed"
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            assert "PRIVATE KEY-----" not in text, f"{path} contains a private key"
    for name in ("cluster.key", "cluster.crt"):
        assert not (K8S / name).exists(), f"deploy/kubernetes/{name} must not be committed"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("entry", DOCUMENTS, ids=_doc_id)
def test_every_manifest_validates_against_the_kubernetes_schema(
    entry: tuple[str, Doc], version: str
) -> None:
    _, doc = entry
    problem = None
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path) or "(top level)"
        problem = f"invalid for Kubernetes {exc.version} at {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        problem = f"not checkable: {exc.message}"
    if problem:
        pytest.fail(f"{_doc_id(entry)} is {problem}", pytrace=False)


@pytest.mark.parametrize("entry", DOCUMENTS, ids=_doc_id)
def test_every_object_is_in_the_ferry_namespace_and_carries_the_app_labels(
    entry: tuple[str, Doc],
) -> None:
    _, doc = entry
    metadata = doc["metadata"]
    assert metadata["labels"][NAME] == "ferry"
    if doc["kind"] == "Namespace":
        assert metadata["name"] == "ferry"
        return
    assert metadata.get("namespace") == "ferry", "kubectl apply -f on one file must land in ferry"
    assert metadata["labels"].get(COMPONENT) in {"control-plane", "data-plane", "redis"}


# --------------------------------------------------------------------------- Kubernetes: pods


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_workload_selectors_match_their_pod_template_labels(workload: Doc) -> None:
    selector = workload["spec"]["selector"]["matchLabels"]
    assert _selects(selector, _pod_labels(workload))
    assert {NAME, COMPONENT} <= selector.keys()


def test_workloads_select_disjoint_pods() -> None:
    workloads = _workloads()
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        owners = [w["metadata"]["name"] for w in workloads if _selects(selector, _pod_labels(w))]
        assert owners == [workload["metadata"]["name"]]


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_every_container_has_resource_requests_and_limits(workload: Doc) -> None:
    for container in _containers(workload):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), container["name"]
        assert {"cpu", "memory"} <= resources.get("limits", {}).keys(), container["name"]


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem(workload: Doc) -> None:
    spec = workload["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod.get("runAsUser", 0) != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    for container in _containers(workload):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not context.get("privileged"), container["name"]


def test_ferry_pods_run_as_the_image_user() -> None:
    for workload, _ in _ferry_containers():
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsUser"] == FERRY_UID
        assert context["fsGroup"] == FERRY_UID, "the Secret files (mode 0440) are group-readable"


@pytest.mark.parametrize(
    "pair", _ferry_containers(), ids=lambda p: f"{p[0]['metadata']['name']}/{p[1]['name']}"
)
def test_ferry_container_command_line_parses_with_the_real_cli(pair: tuple[Doc, Doc]) -> None:
    workload, container = pair
    assert "command" not in container, "keep the image's ENTRYPOINT (ferry); pass args only"
    args = parse_ferry(list(container["args"]))
    assert args.command == _pod_labels(workload)[COMPONENT]
    assert args.log_format == "json"
    listens = _listens(args)
    declared = {p["containerPort"] for p in container["ports"]}
    assert {port for _, port in listens.values()} == declared, "containerPorts = listen ports"
    for dest, (host, _) in listens.items():
        assert host == "0.0.0.0", f"--{dest.replace('_', '-')} must listen on the pod's address"


@pytest.mark.parametrize(
    "pair", _ferry_containers(), ids=lambda p: f"{p[0]['metadata']['name']}/{p[1]['name']}"
)
def test_every_file_ferry_uses_is_on_a_volume_of_the_right_kind(pair: tuple[Doc, Doc]) -> None:
    workload, container = pair
    args = parse_ferry(list(container["args"]))
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}

    # --data-dir is writable (the root filesystem is not) and per pod.
    assert "emptyDir" in mounts[args.data_dir], "--data-dir must be an emptyDir mount"
    assert "emptyDir" in mounts["/tmp"]

    # The cluster certificate: the kubernetes.io/tls Secret's tls.crt and tls.key.
    cert, key = PurePosixPath(args.cluster_cert), PurePosixPath(args.cluster_cert_key)
    assert cert.parent == key.parent and (cert.name, key.name) == ("tls.crt", "tls.key")
    assert mounts[str(cert.parent)]["secret"]["secretName"] == "ferry-cluster-cert"
    assert not args.cluster_insecure

    if args.command == "control-plane":
        tokens = PurePosixPath(args.admin_tokens)
        assert mounts[str(tokens.parent)]["secret"]["secretName"] == "ferry-admin-tokens"


def test_control_plane_startup_and_liveness_probes_are_grpc_on_the_health_listen_port() -> None:
    _, container = _ferry_container("control-plane")
    args = parse_ferry(list(container["args"]))
    _, health_port = parse_host_port(args.health_listen)
    _, cluster_port = parse_host_port(args.cluster_listen)
    assert health_port != cluster_port, "the cluster port needs mTLS, which probes cannot do"
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, probe
        assert container[probe]["grpc"].get("service", "") == "", probe


def test_control_plane_readiness_asks_status_ready_on_the_admin_port() -> None:
    # Ready only while Redis answers (Kong's /status/ready, served without a token).
    _, container = _ferry_container("control-plane")
    args = parse_ferry(list(container["args"]))
    _, admin_port = parse_host_port(args.admin_listen)
    readiness = container["readinessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/status/ready", admin_port)
    assert readiness.get("scheme", "HTTP") == "HTTP"
    assert "httpHeaders" not in readiness, "no admin token in a manifest"


def test_the_cluster_service_keeps_control_planes_that_are_not_ready() -> None:
    # With Redis down every CP is not ready, yet each still serves its last configuration.
    (service,) = [s for s in _of_kind("Service") if s["metadata"]["name"] == "ferry-cp-cluster"]
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_data_plane_readiness_asks_status_ready_and_liveness_asks_status_on_the_status_port() -> None:
    _, container = _ferry_container("data-plane")
    args = parse_ferry(list(container["args"]))
    _, status_port = parse_host_port(args.status_listen)
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/status/ready", status_port)
    assert (liveness["path"], liveness["port"]) == ("/status", status_port)


def test_control_plane_runs_two_replicas_and_the_autoscaler_owns_the_data_plane_count() -> None:
    control_plane, _ = _ferry_container("control-plane")
    data_plane, _ = _ferry_container("data-plane")
    assert control_plane["spec"]["replicas"] == 2
    assert "replicas" not in data_plane["spec"], "re-applying would reset the autoscaler's count"


def test_autoscaler_scales_the_data_plane_deployment_on_cpu() -> None:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    data_plane, _ = _ferry_container("data-plane")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == data_plane["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_pod_disruption_budgets_select_the_pods_of_the_control_and_data_planes() -> None:
    covered = set()
    for pdb in _of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        owners = [w for w in _workloads() if _selects(selector, _pod_labels(w))]
        assert len(owners) == 1, f"PodDisruptionBudget {pdb['metadata']['name']} selects {owners}"
        assert selector == owners[0]["spec"]["selector"]["matchLabels"]
        covered.add(_pod_labels(owners[0])[COMPONENT])
    assert covered == {"control-plane", "data-plane"}


@pytest.mark.parametrize("service", _of_kind("Service"), ids=lambda s: s["metadata"]["name"])
def test_services_select_existing_pods_and_target_ports_they_expose(service: Doc) -> None:
    selector = service["spec"]["selector"]
    owners = [w for w in _workloads() if _selects(selector, _pod_labels(w))]
    assert len(owners) == 1, f"selects {[o['metadata']['name'] for o in owners]}"
    exposed = _container_ports(owners[0])
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in exposed, f"targetPort {target!r} is not a containerPort of the pods"


def test_data_planes_dial_the_control_plane_cluster_service() -> None:
    _, dp = _ferry_container("data-plane")
    control_plane, cp = _ferry_container("control-plane")
    host, port = parse_host_port(parse_ferry(list(dp["args"])).control_plane)
    service = _one("Service", host)
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    _, cluster_port = parse_host_port(parse_ferry(list(cp["args"])).cluster_listen)
    assert _container_ports(control_plane)[service_port["targetPort"]] == cluster_port
    assert _selects(service["spec"]["selector"], _pod_labels(control_plane))


def test_admin_api_is_not_exposed_outside_the_cluster() -> None:
    _, cp = _ferry_container("control-plane")
    _, admin_port = parse_host_port(parse_ferry(list(cp["args"])).admin_listen)
    for service in _of_kind("Service"):
        if service["spec"].get("type", "ClusterIP") in {"LoadBalancer", "NodePort"}:
            for port in service["spec"]["ports"]:
                assert port.get("targetPort") not in {"admin", admin_port}


def test_proxy_service_sends_port_80_to_the_proxy_port_and_443_to_its_tls_port() -> None:
    data_plane, dp = _ferry_container("data-plane")
    entries = parse_listen_list(parse_ferry(list(dp["args"])).proxy_listen)
    wanted = {443 if entry.ssl else 80: entry.port for entry in entries}
    proxies = [s for s in _of_kind("Service")
               if _selects(s["spec"]["selector"], _pod_labels(data_plane))]
    (service,) = proxies
    assert {port["port"]: _container_ports(data_plane)[port["targetPort"]]
            for port in service["spec"]["ports"]} == wanted == {80: 8000, 443: 8443}


def test_control_planes_use_the_bundled_redis_through_its_headless_service() -> None:
    _, cp = _ferry_container("control-plane")
    url = parse_ferry(list(cp["args"])).redis_url
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", url)
    assert match, url
    host, port = match.group(1), int(match.group(2))
    service = _one("Service", host)
    assert service["spec"]["clusterIP"] == "None"
    assert port in {p["port"] for p in service["spec"]["ports"]}
    redis = _one("StatefulSet", host)
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert _selects(service["spec"]["selector"], _pod_labels(redis))


def test_redis_keeps_an_append_only_file_on_its_persistent_volume() -> None:
    (redis,) = _of_kind("StatefulSet")
    (container,) = _containers(redis)
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    assert mount["name"] == claim["metadata"]["name"]


def test_network_policy_lets_only_control_planes_reach_redis() -> None:
    (policy,) = _of_kind("NetworkPolicy")
    (redis,) = _of_kind("StatefulSet")
    control_plane, _ = _ferry_container("control-plane")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], _pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert _selects(peer["podSelector"]["matchLabels"], _pod_labels(control_plane))
    assert [p["port"] for p in rule["ports"]] == [6379]


def test_docs_create_every_secret_the_pods_mount() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    mounted = {
        volume["secret"]["secretName"]
        for workload in _workloads()
        for volume in workload["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in volume
    }
    assert mounted == {"ferry-cluster-cert", "ferry-admin-tokens"}
    assert "kubectl create secret tls ferry-cluster-cert --cert=cluster.crt --key=cluster.key" in docs
    assert "kubectl create secret generic ferry-admin-tokens" in docs


# --------------------------------------------------------------------------- the DP-only overlay


def _overlay_patches() -> tuple[set[tuple[str, str]], list[Doc]]:
    """(kind, name) the overlay deletes, and its JSON 6902 operations on ferry-dp."""
    deleted: set[tuple[str, str]] = set()
    operations: list[Doc] = []
    for patch in _kustomization(DP_ONLY)["patches"]:
        body = yaml.safe_load(patch["patch"])
        if isinstance(body, dict) and body.get("$patch") == "delete":
            deleted.add((body["kind"], body["metadata"]["name"]))
        else:
            assert patch["target"]["name"] == "ferry-dp"
            operations.extend(body)
    return deleted, operations


def test_data_plane_only_overlay_keeps_the_data_planes_and_deletes_everything_else() -> None:
    assert _kustomization(DP_ONLY)["resources"] == ["../../kubernetes"]
    deleted, _ = _overlay_patches()
    base = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in DOCUMENTS}
    assert deleted <= base.keys(), f"deletes objects the base lacks: {deleted - base.keys()}"
    kept = {key for key in base if key not in deleted}
    components = {base[key]["metadata"]["labels"].get(COMPONENT) for key in kept}
    assert components == {None, "data-plane"}, "only the namespace and data-plane objects stay"
    assert ("Deployment", "ferry-dp") in kept


def test_data_plane_only_overlay_replaces_the_control_plane_address_it_checks_first() -> None:
    _, dp = _ferry_container("data-plane")
    _, operations = _overlay_patches()
    args = list(dp["args"])
    prefix = "/spec/template/spec/containers/0/args/"
    assert dp is _one("Deployment", "ferry-dp")["spec"]["template"]["spec"]["containers"][0]
    for operation in operations:
        assert operation["path"].startswith(prefix)
        index = int(operation["path"].removeprefix(prefix))
        if operation["op"] == "test":
            assert args[index] == operation["value"], "the overlay's guard no longer matches"
        else:
            assert operation["op"] == "replace" and args[index - 1] == "--control-plane"
            args[index] = operation["value"]
    patched = parse_ferry(args)
    assert parse_host_port(patched.control_plane)[1] == 8005


def _kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.mark.skipif(_kustomize_command() is None, reason="neither kubectl nor kustomize installed")
@pytest.mark.parametrize("directory", [K8S, DP_ONLY], ids=["base", "data-plane-only"])
def test_kustomize_renders_the_kustomizations_into_valid_objects(directory: Path) -> None:
    command = _kustomize_command()
    assert command is not None
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    keys = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered}
    base = {(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS}
    deleted = _overlay_patches()[0] if directory == DP_ONLY else set()
    assert keys == base - deleted
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                parse_ferry(list(container["args"]))


# --------------------------------------------------------------------------- compose


def _compose() -> Doc:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


COMPOSE_SERVICES: dict[str, Doc] = _compose()["services"]


def _shell_ferry_commands(script: str) -> Iterator[list[str]]:
    """The argv (after ``ferry``) of each ``ferry ...`` command of a shell script."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segment: list[str] = []
    for token in [*lexer, ";"]:
        if token in {";", "&&", "||", "|", "&"}:
            if segment[:1] == ["exec"]:
                segment = segment[1:]
            if segment[:1] == ["ferry"]:
                yield segment[1:]
            segment = []
        else:
            segment.append(token)


def _compose_ferry_argvs(service: Doc) -> list[list[str]]:
    """Every ferry command line a compose service runs (none for other programs)."""
    if service.get("image") != COMPOSE_FERRY_IMAGE:
        return []
    entrypoint, command = service.get("entrypoint"), service.get("command")
    if entrypoint is None:  # the image's ENTRYPOINT ["ferry"]
        assert isinstance(command, list), "use the exec form (a list) for commands"
        return [[str(arg) for arg in command]]
    if entrypoint[:2] == ["/bin/sh", "-c"]:
        return list(_shell_ferry_commands(" ".join(str(part) for part in command or [])))
    return []


def _ferry_services() -> list[tuple[str, list[str]]]:
    return [
        (name, argv)
        for name, service in COMPOSE_SERVICES.items()
        for argv in _compose_ferry_argvs(service)
    ]


def _compose_ports(service: Doc) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port."""
    published = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published.append((entry.get("host_ip", "0.0.0.0"), int(entry["published"]),
                              int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 1:
            continue  # a container port only: Docker picks a free host port
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        published.append((host_ip, int(parts[-2]), int(parts[-1])))
    return published


def test_compose_runs_redis_a_control_plane_two_data_planes_and_a_demo_backend() -> None:
    commands = {name: argv[0] for name, argv in _ferry_services()}
    assert commands.get("cp") == "control-plane"
    assert sorted(n for n, c in commands.items() if c == "data-plane") == ["dp1", "dp2"]
    assert commands.get("cert") == "cert"
    assert "redis" in COMPOSE_SERVICES
    assert {"backend-a", "backend-b"} <= COMPOSE_SERVICES.keys()


@pytest.mark.parametrize(("service", "argv"), _ferry_services(),
                         ids=[name for name, _ in _ferry_services()])
def test_compose_ferry_command_lines_parse_with_the_real_cli(service: str, argv: list[str]) -> None:
    args = parse_ferry(argv)
    if args.command in {"control-plane", "data-plane"}:
        assert args.log_format == "json"
        assert not args.cluster_insecure, "compose uses the shared certificate from `cert`"


@pytest.mark.parametrize("name", sorted(COMPOSE_SERVICES))
def test_compose_services_depend_on_services_that_exist_with_a_meaningful_condition(
    name: str,
) -> None:
    depends_on = COMPOSE_SERVICES[name].get("depends_on", {})
    assert isinstance(depends_on, dict), "use the long form with a condition"
    for target, spec in depends_on.items():
        assert target in COMPOSE_SERVICES, f"{name} depends on unknown service {target}"
        condition = spec["condition"]
        if condition == "service_healthy":
            assert "healthcheck" in COMPOSE_SERVICES[target], f"{target} has no healthcheck"
        elif condition == "service_completed_successfully":
            assert COMPOSE_SERVICES[target].get("restart") == "no", f"{target} is not a one-shot"
        else:
            assert condition == "service_started"


def test_compose_long_running_ferry_services_have_healthchecks() -> None:
    for name, argv in _ferry_services():
        if argv[0] in {"control-plane", "data-plane"}:
            assert "healthcheck" in COMPOSE_SERVICES[name], name
    assert "healthcheck" in COMPOSE_SERVICES["redis"]


def test_compose_healthchecks_probe_the_health_and_status_ports() -> None:
    for name, argv in _ferry_services():
        args = parse_ferry(argv)
        if args.command == "control-plane":
            expected = f"127.0.0.1:{parse_host_port(args.health_listen)[1]}"
        elif args.command == "data-plane":
            expected = f"http://127.0.0.1:{parse_host_port(args.status_listen)[1]}/status/ready"
        else:
            continue
        test = " ".join(COMPOSE_SERVICES[name]["healthcheck"]["test"])
        assert expected in test, f"{name}'s healthcheck does not ask {expected}"


def test_compose_published_host_ports_do_not_collide() -> None:
    seen: dict[int, list[tuple[str, str]]] = {}
    for name, service in COMPOSE_SERVICES.items():
        for host_ip, host_port, _ in _compose_ports(service):
            for other_name, other_ip in seen.get(host_port, []):
                assert "0.0.0.0" not in {host_ip, other_ip} and host_ip != other_ip, (
                    f"host port {host_port} is published by {other_name} and {name}")
            seen.setdefault(host_port, []).append((name, host_ip))


def test_compose_publishes_ports_the_ferry_services_listen_on() -> None:
    for name, argv in _ferry_services():
        listens = _listens(parse_ferry(argv))
        for _, _, container_port in _compose_ports(COMPOSE_SERVICES[name]):
            matching = [(h, p) for h, p in listens.values() if p == container_port]
            assert matching, f"{name} publishes {container_port}, which it does not listen on"
            assert matching[0][0] == "0.0.0.0", f"{name} listens on loopback only"
    admin = [p for s in COMPOSE_SERVICES.values() for p in _compose_ports(s) if p[2] == 8001]
    assert admin and all(ip == "127.0.0.1" for ip, _, _ in admin), "Admin API: host loopback only"


def test_compose_data_planes_reach_the_control_plane_with_the_generated_certificate() -> None:
    argvs = dict(_ferry_services())
    cp = parse_ferry(argvs["cp"])
    cert = parse_ferry(argvs["cert"])
    _, cluster_port = parse_host_port(cp.cluster_listen)
    for name in ("cp", "dp1", "dp2"):
        args = parse_ferry(argvs[name])
        assert (args.cluster_cert, args.cluster_cert_key) == (cert.cert, cert.key)
        volumes = COMPOSE_SERVICES[name]["volumes"]
        assert f"cluster-cert:{PurePosixPath(cert.cert).parent}:ro" in volumes
        if name != "cp":
            assert parse_host_port(args.control_plane) == ("cp", cluster_port)
    assert f"cluster-cert:{PurePosixPath(cert.cert).parent}" in COMPOSE_SERVICES["cert"]["volumes"]


def test_compose_control_plane_uses_the_redis_service_with_an_append_only_file() -> None:
    cp = parse_ferry(dict(_ferry_services())["cp"])
    assert cp.redis_url == "redis://redis:6379/0"
    redis = COMPOSE_SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_compose_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in COMPOSE_SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_compose_demo_configuration_is_valid_and_targets_the_demo_backends() -> None:
    setup = parse_ferry(dict(_ferry_services())["setup"])
    assert setup.command == "apply" and setup.admin_url == "http://cp:8001"
    mounted = {PurePosixPath(v.split(":")[1]): v.split(":")[0]
               for v in COMPOSE_SERVICES["setup"]["volumes"]}
    source = DEPLOY / mounted[PurePosixPath(setup.file)]
    config = resolve_document(parse_document(source.read_text(encoding="utf-8")), {},
                              int(time.time()))
    backends = {}
    for name in ("backend-a", "backend-b"):
        command = COMPOSE_SERVICES[name]["command"]
        backends[f"{name}:{command[command.index('--port') + 1]}"] = name
    assert {t["target"] for t in config["targets"]} == set(backends)


# --------------------------------------------------------------------------- systemd


UNITS = {
    "ferry-control-plane.service": ("control-plane", "control-plane.env"),
    "ferry-data-plane.service": ("data-plane", "data-plane.env"),
}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / name, encoding="utf-8")
    return parser


def test_systemd_directory_holds_the_two_units_and_their_env_files() -> None:
    expected = set(UNITS) | {env for _, env in UNITS.values()}
    assert {p.name for p in SYSTEMD.iterdir()} == expected


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_runs_ferry_with_a_valid_command_line(name: str) -> None:
    service = _unit(name)["Service"]
    argv = shlex.split(service["ExecStart"].lstrip("-@+!:"))
    assert PurePosixPath(argv[0]).name == "ferry"
    args = parse_ferry(argv[1:])
    assert args.command == UNITS[name][0]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_is_a_hardened_simple_service_of_user_ferry(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["User"] == "ferry"
    assert service["EnvironmentFile"] == f"/etc/ferry/{UNITS[name][1]}"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 10, "planes stop gracefully within 5 s"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "ferry"
    assert service["ReadWritePaths"] == "/var/lib/ferry"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_env_file_sets_only_flags_its_command_has(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, env_file = UNITS[name]
    variables = {}
    for line in (SYSTEMD / env_file).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            variables[key] = value
    subparser = _subcommand_parser(command)
    by_env = {}
    for action in subparser._actions:
        long_flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if long_flags and long_flags[0] != "--help":
            by_env["FERRY_" + long_flags[0][2:].replace("-", "_").upper()] = action
    unknown = sorted(set(variables) - set(by_env))
    assert not unknown, f"{env_file} sets variables `ferry {command}` ignores: {unknown}"

    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    args = parse_ferry([command])
    for key, action in by_env.items():
        if key in variables and action.choices is not None:
            assert getattr(args, action.dest) in action.choices, f"{key}={variables[key]}"
    data_dir = PurePosixPath(args.data_dir)
    assert data_dir.is_relative_to("/var/lib/ferry"), "the unit's StateDirectory"
    assert not args.cluster_insecure and args.cluster_cert and args.cluster_cert_key


def test_systemd_planes_keep_their_state_apart() -> None:
    dirs = set()
    for env_file in ("control-plane.env", "data-plane.env"):
        text = (SYSTEMD / env_file).read_text(encoding="utf-8")
        (data_dir,) = re.findall(r"^FERRY_DATA_DIR=(.+)$", text, re.MULTILINE)
        dirs.add(data_dir)
    assert len(dirs) == 2, "a CP and a DP on one host must not share a --data-dir"


# --------------------------------------------------------------------------- image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_in_one_stage_and_runs_ferry_as_a_non_root_user_in_another() -> None:
    instructions = _dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    assert ("COPY", "--from=build /opt/ferry /opt/ferry") in instructions
    assert ("ENTRYPOINT", '["ferry"]') in instructions
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user.split(":")[0] == str(FERRY_UID)
    (expose,) = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    assert {int(p) for p in expose.split()} == {8000, 8443, 8001, 8005, 8006, 8100}


def test_dockerfile_copies_every_package_the_wheel_includes() -> None:
    import fnmatch
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    # The top-level packages those patterns match in the tree ("ferry*" is ferry and
    # ferry_shared), as setuptools' find would include them.
    packages = {
        path.name for path in REPO.iterdir()
        if (path / "__init__.py").is_file()
        and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in patterns)
    }
    assert {"ferry", "ferry_shared", "control_plane", "data_plane", "proto"} <= packages
    copied = {
        rest.split()[0].rstrip("/")
        for keyword, rest in _dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
    }
    assert packages <= copied, f"not copied into the build stage: {packages - copied}"
    assert {"pyproject.toml", "setup.py", "constraints.txt", "README.md"} <= {
        part for keyword, rest in _dockerfile_instructions() if keyword == "COPY"
        for part in rest.split()
    }


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    entries = {
        line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "ferry-data", "bench/results", "**/__pycache__", "**/*.so"} <= entries
