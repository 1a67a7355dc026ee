"""The packaging agrees with itself: Dockerfile, Kubernetes manifests, configs, propeller config.

No cluster and no Docker engine run here, so these tests read the files and check that what one
file promises another delivers: the ports the host is configured with are the ports the
containers expose, the probes hit and the Service routes to; every path the configuration names
is on a volume of the right kind; the shutdown budget fits in the grace period; the endpoint in
FlytePropeller's configuration names the Service and port; the image's user, ports, volume and
config path are the ones the manifests rely on; and the configs only use keys the host knows
(it refuses unknown keys at start, which in a cluster means a crash-looping pod).

Files read (paths from the repository root):
  Dockerfile, .dockerignore, rust-toolchain.toml, config/default.toml, config/container.toml,
  deploy/kubernetes/{base,overlays/flyte,components/shared-plugins}/*.yaml,
  deploy/flyte/propeller-connector-config.yaml, deploy/OPERATIONS.md
"""

import json
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: the backport (tests/requirements-conformance.txt)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy/kubernetes/base"
OVERLAY = REPO / "deploy/kubernetes/overlays/flyte"
SHARED_PLUGINS = REPO / "deploy/kubernetes/components/shared-plugins"
PROPELLER_CONFIG = REPO / "deploy/flyte/propeller-connector-config.yaml"
OPERATIONS = REPO / "deploy/OPERATIONS.md"

# Per-call timeout keys propeller's connector-service plugin reads (FLYTE-PROTOCOL.md 2.4).
PROPELLER_TIMEOUT_KEYS = {"CreateTask", "GetTask", "DeleteTask", "ExecuteTaskSync", "ListConnectors"}

# Every metric the host exports; the operator's guide must explain each.
METRICS = [
    "flyte_connector_requests_success_total",
    "flyte_connector_requests_failure_total",
    "flyte_connector_request_latency_seconds",
    "flyte_connector_input_literal_bytes",
    "agent_host_plugin_loads_total",
    "agent_host_plugin_load_failures_total",
    "agent_host_plugins_serving",
    "agent_host_mapped_libraries",
    "agent_host_calls_in_flight",
    "agent_host_plugin_panics_total",
    "agent_host_calls_rejected_total",
    "agent_host_draining_versions",
    "agent_host_generations_leaked_total",
    "agent_host_generations_leaked",
    "agent_host_watch_mode",
]


# ---------------------------------------------------------------------------------------------
# Reading the files


def read_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def one_of_kind(docs, kind, where):
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, "expected exactly one %s in %s, found %d" % (kind, where, len(found))
    return found[0]


def leaf_keys(table, prefix=""):
    """Dotted paths of the non-table values of a TOML document, with their values."""
    out = {}
    for key, value in table.items():
        path = prefix + key
        if isinstance(value, dict):
            out.update(leaf_keys(value, path + "."))
        else:
            out[path] = value
    return out


def posix(path):
    return PurePosixPath(path)


def dockerfile_instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf.strip():
        logical.append(buf)
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(args):
    """The words of a JSON (exec) or shell form argument list."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


class Dockerfile:
    """The parts of the Dockerfile the manifests depend on, per build stage."""

    def __init__(self, path):
        instructions = dockerfile_instructions(path.read_text())
        self.global_args = {}
        self.stages = []  # dicts: name, image, instructions
        for word, args in instructions:
            if word == "FROM":
                parts = [p for p in args.split() if not p.startswith("--")]
                name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None
                self.stages.append({"name": name, "image": self.substitute(parts[0]), "instructions": []})
            elif not self.stages:
                if word == "ARG":
                    key, _, default = args.partition("=")
                    self.global_args[key.strip()] = default.strip().strip('"')
            else:
                self.stages[-1]["instructions"].append((word, args))
        assert self.stages, "no FROM in the Dockerfile"

    def substitute(self, text):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.global_args.get(m.group(1) or m.group(2), m.group(0)), text)

    @property
    def final(self):
        return self.stages[-1]

    def final_all(self, word):
        return [args for w, args in self.final["instructions"] if w == word]

    def final_last(self, word):
        found = self.final_all(word)
        assert found, "the final stage of the Dockerfile has no %s" % word
        return found[-1]

    def exposed_ports(self):
        ports = set()
        for args in self.final_all("EXPOSE"):
            for p in args.split():
                ports.add(int(p.split("/")[0]))
        return ports

    def volumes(self):
        out = []
        for args in self.final_all("VOLUME"):
            out.extend(exec_form(args))
        return [posix(v) for v in out]

    def copies(self):
        """(source words, destination, --from) of the final stage's COPY/ADD instructions."""
        out = []
        for word, args in self.final["instructions"]:
            if word not in ("COPY", "ADD"):
                continue
            words = exec_form(args)
            flags = [w for w in words if w.startswith("--")]
            rest = [w for w in words if not w.startswith("--")]
            src_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            out.append((rest[:-1], rest[-1], src_stage))
        return out

    def command(self):
        return exec_form(self.final_last("ENTRYPOINT")) + exec_form(self.final_last("CMD"))


def config_path_in(args):
    assert "--config" in args, "no --config FILE in %r" % (args,)
    i = args.index("--config")
    assert i + 1 < len(args), "--config without a file in %r" % (args,)
    return posix(args[i + 1])


# ---------------------------------------------------------------------------------------------
# Fixtures: everything parsed once


@pytest.fixture(scope="module")
def default_config():
    return tomllib.loads((REPO / "config/default.toml").read_text())


@pytest.fixture(scope="module")
def base_docs():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(read_yaml_docs(BASE / resource))
    return docs


@pytest.fixture(scope="module")
def deployment(base_docs):
    return one_of_kind(base_docs, "Deployment", BASE)


@pytest.fixture(scope="module")
def pod(deployment):
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def host_container(pod):
    """The container running `agent-host serve`."""
    serving = [c for c in pod["containers"] if "serve" in (c.get("command", []) + c.get("args", []))[:1]]
    assert len(serving) == 1, "expected one container running `serve`, found %d" % len(serving)
    return serving[0]


@pytest.fixture(scope="module")
def configmap(base_docs):
    return one_of_kind(base_docs, "ConfigMap", BASE)


@pytest.fixture(scope="module")
def config_file_path(host_container):
    return config_path_in(host_container.get("command", []) + host_container.get("args", []))


@pytest.fixture(scope="module")
def cluster_config(configmap, config_file_path):
    """The host configuration in the ConfigMap, under the file name the Deployment passes."""
    data = configmap.get("data", {})
    assert config_file_path.name in data, "ConfigMap %s has no key %r (the file in --config)" % (
        configmap["metadata"]["name"], config_file_path.name)
    return tomllib.loads(data[config_file_path.name])


@pytest.fixture(scope="module")
def container_config():
    return tomllib.loads((REPO / "config/container.toml").read_text())


@pytest.fixture(scope="module")
def service(base_docs):
    return one_of_kind(base_docs, "Service", BASE)


@pytest.fixture(scope="module")
def dockerfile():
    return Dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="module")
def propeller():
    return yaml.safe_load(PROPELLER_CONFIG.read_text())


def setting(config, default_config, dotted):
    """A configuration value as the host sees it: the file's, else the embedded default's."""
    for table in (config, default_config):
        node = table
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    pytest.fail("%s is neither in the config nor in config/default.toml" % dotted)


def container_port(container, ref):
    """The port number a probe or Service targetPort refers to (by name or number)."""
    ports = container.get("ports", [])
    if isinstance(ref, int):
        assert any(p["containerPort"] == ref for p in ports), "port %d is not a port of container %s" % (
            ref, container["name"])
        return ref
    named = [p["containerPort"] for p in ports if p.get("name") == ref]
    assert named, "container %s has no port named %r" % (container["name"], ref)
    return named[0]


def mount_for(container, path):
    """The volumeMount holding `path` (the deepest mount at or above it), or None."""
    path = posix(path)
    best = None
    for m in container.get("volumeMounts", []):
        mount = posix(m["mountPath"])
        if (path == mount or mount in path.parents) and (best is None or len(mount.parts) > len(posix(best["mountPath"]).parts)):
            best = m
    return best


def volume(pod, name):
    found = [v for v in pod.get("volumes", []) if v["name"] == name]
    assert len(found) == 1, "expected one volume named %r, found %d" % (name, len(found))
    return found[0]


# ---------------------------------------------------------------------------------------------
# Configuration keys


@pytest.mark.parametrize("which", ["configmap", "config/container.toml"])
def test_configs_use_only_keys_the_host_knows(which, default_config, cluster_config, container_config):
    config = cluster_config if which == "configmap" else container_config
    known = leaf_keys(default_config)
    for key, value in leaf_keys(config).items():
        if key.startswith("plugins."):
            continue  # [plugins.<name>] tables are free-form, handed to the plugin
        assert key in known, "%s: `%s` is not a key of config/default.toml (the host refuses unknown keys)" % (which, key)
        assert type(value) is type(known[key]), "%s: `%s` is a %s, config/default.toml has a %s" % (
            which, key, type(value).__name__, type(known[key]).__name__)


# ---------------------------------------------------------------------------------------------
# Ports and probes


def test_container_ports_are_the_configured_ports(host_container, cluster_config, default_config):
    grpc = setting(cluster_config, default_config, "server.port")
    metrics = setting(cluster_config, default_config, "server.metrics_port")
    assert container_port(host_container, "grpc") == grpc, "containerPort `grpc` is not [server] port"
    assert container_port(host_container, "metrics") == metrics, "containerPort `metrics` is not [server] metrics_port"
    assert {p["containerPort"] for p in host_container["ports"]} == {grpc, metrics}


def test_service_routes_to_the_configured_ports(service, host_container, cluster_config, default_config):
    grpc = setting(cluster_config, default_config, "server.port")
    metrics = setting(cluster_config, default_config, "server.metrics_port")
    targets = {}
    for p in service["spec"]["ports"]:
        targets[p["name"]] = (p["port"], container_port(host_container, p.get("targetPort", p["port"])))
    assert {t for _, t in targets.values()} == {grpc, metrics}, "Service targets %r, the host listens on %r" % (
        targets, {grpc, metrics})
    grpc_ports = [port for port, target in targets.values() if target == grpc]
    # Propeller's k8s:// resolver dials pod IPs on the endpoint's port: keeping the Service port
    # equal makes k8s://, dns:/// and in-cluster clients agree on one number.
    assert grpc_ports == [grpc], "the Service's gRPC port %r differs from the container's %d" % (grpc_ports, grpc)


def test_readiness_probe_is_the_grpc_health_of_the_server(host_container, cluster_config, default_config):
    probe = host_container.get("readinessProbe")
    assert probe and "grpc" in probe, "the readiness probe must be a gRPC health check"
    assert probe["grpc"]["port"] == setting(cluster_config, default_config, "server.port"), (
        "the readiness probe does not check the gRPC port")
    # "" is the whole server: NOT_SERVING before the first plugin scan and while draining.
    assert probe["grpc"].get("service", "") == "", "the readiness probe must check service \"\""


def test_liveness_probe_targets_a_served_port(host_container, cluster_config, default_config):
    probe = host_container.get("livenessProbe")
    assert probe, "no liveness probe"
    if "httpGet" in probe:
        assert probe["httpGet"]["path"] == "/healthz", "the admin port serves liveness at /healthz"
        assert container_port(host_container, probe["httpGet"]["port"]) == setting(
            cluster_config, default_config, "server.metrics_port"), "/healthz is on the metrics port"
    elif "grpc" in probe:
        assert probe["grpc"]["port"] == setting(cluster_config, default_config, "server.port")
    else:
        pytest.fail("the liveness probe must be HTTP /healthz on the metrics port or gRPC health")


def test_prometheus_annotations_point_at_the_metrics_port(deployment, cluster_config, default_config):
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert int(annotations["prometheus.io/port"]) == setting(cluster_config, default_config, "server.metrics_port")
    assert annotations.get("prometheus.io/path") == "/metrics"


# ---------------------------------------------------------------------------------------------
# Paths and volumes


def test_config_file_comes_from_the_configmap(pod, host_container, configmap, config_file_path):
    mount = mount_for(host_container, config_file_path)
    assert mount, "nothing is mounted at %s (the file given to --config)" % config_file_path
    source = volume(pod, mount["name"]).get("configMap")
    assert source, "%s is not a ConfigMap volume" % mount["mountPath"]
    assert source["name"] == configmap["metadata"]["name"], "the config volume mounts ConfigMap %r, not %r" % (
        source["name"], configmap["metadata"]["name"])
    relative = str(config_file_path.relative_to(posix(mount["mountPath"])))
    keys = {i["path"]: i["key"] for i in source.get("items", [])} or {k: k for k in configmap["data"]}
    assert relative in keys, "ConfigMap volume at %s has no file %s" % (mount["mountPath"], relative)


def test_plugin_dir_is_on_a_writable_volume(host_container, cluster_config, default_config):
    plugin_dir = setting(cluster_config, default_config, "loader.plugin_dir")
    assert posix(plugin_dir).is_absolute(), "loader.plugin_dir must be absolute in a container"
    mount = mount_for(host_container, plugin_dir)
    assert mount, "loader.plugin_dir %s is on no volume" % plugin_dir
    # Operators publish into it (kubectl cp + mv) and sidecars sync into it.
    assert not mount.get("readOnly"), "the plugin volume is mounted read-only"


def test_work_dir_is_on_a_disk_backed_emptydir(pod, host_container, cluster_config, default_config):
    work_dir = setting(cluster_config, default_config, "loader.work_dir")
    assert work_dir, "loader.work_dir is empty: the host would use the read-only root's temp dir"
    mount = mount_for(host_container, work_dir)
    assert mount, "loader.work_dir %s is on no volume" % work_dir
    assert not mount.get("readOnly"), "the work volume is mounted read-only"
    source = volume(pod, mount["name"])
    assert "emptyDir" in source, "the work dir must be a per-pod emptyDir (private copies)"
    assert (source["emptyDir"] or {}).get("medium") != "Memory", "the work dir must be on disk, not tmpfs"
    plugin_mount = mount_for(host_container, setting(cluster_config, default_config, "loader.plugin_dir"))
    assert plugin_mount["name"] != mount["name"], "work_dir and plugin_dir share a volume"


def test_secrets_dir_is_the_mounted_secret(pod, host_container, cluster_config, default_config):
    secrets_dir = posix(setting(cluster_config, default_config, "secrets.dir"))
    assert secrets_dir == posix("/etc/secrets"), "flytekit and the plugin SDK read /etc/secrets"
    mounts = [m for m in host_container.get("volumeMounts", []) if posix(m["mountPath"]) == secrets_dir]
    assert len(mounts) == 1, "expected one volume mounted at %s" % secrets_dir
    assert mounts[0].get("readOnly"), "the secrets volume should be read-only"
    source = volume(pod, mounts[0]["name"]).get("secret")
    assert source, "%s is not a Secret volume" % secrets_dir
    example = one_of_kind(read_yaml_docs(BASE / "secret.yaml"), "Secret", "secret.yaml")
    assert source["secretName"] == example["metadata"]["name"], "the volume mounts Secret %r, secret.yaml is %r" % (
        source["secretName"], example["metadata"]["name"])


def test_every_mount_has_a_volume_and_every_volume_is_mounted(pod):
    declared = {v["name"] for v in pod.get("volumes", [])}
    mounted = set()
    for c in pod.get("initContainers", []) + pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in declared, "container %s mounts undeclared volume %r" % (c["name"], m["name"])
            mounted.add(m["name"])
    assert declared == mounted, "volumes declared but never mounted: %s" % sorted(declared - mounted)


def test_read_only_root_leaves_writable_paths_on_volumes(host_container):
    assert host_container.get("securityContext", {}).get("readOnlyRootFilesystem") is True
    assert mount_for(host_container, "/tmp"), "/tmp needs a volume when the root filesystem is read-only"


def test_seed_container_copies_the_image_plugins_into_the_plugin_volume(pod, host_container, dockerfile,
                                                                         cluster_config, default_config):
    seeds = pod.get("initContainers", [])
    assert len(seeds) == 1, "expected one init container (seed-plugins)"
    seed = seeds[0]
    assert seed["image"] == host_container["image"], "seed-plugins must copy from the same image the host runs"
    plugin_mount = mount_for(host_container, setting(cluster_config, default_config, "loader.plugin_dir"))
    seed_mounts = [m for m in seed.get("volumeMounts", []) if m["name"] == plugin_mount["name"]]
    assert len(seed_mounts) == 1, "seed-plugins does not mount the plugin volume %r" % plugin_mount["name"]
    script = "\n".join(seed.get("command", []) + seed.get("args", []))
    bundled = [dest for _, dest, stage in dockerfile.copies() if stage and dest.rstrip("/").endswith("/plugins")]
    assert bundled, "the Dockerfile copies no plugins from the build stage"
    assert "src=%s" % bundled[0].rstrip("/") in script, "seed-plugins does not copy from %s" % bundled[0]
    assert "dest=%s" % seed_mounts[0]["mountPath"] in script, "seed-plugins does not copy into its plugin mount"
    # Published by rename, like any other publisher: never a half-written *.so.
    assert re.search(r'cp "\$plugin" "\$dest/\.', script) and "mv " in script


# ---------------------------------------------------------------------------------------------
# Shutdown


def test_termination_grace_covers_prestop_and_drain(pod, host_container, cluster_config, default_config):
    # The drain budget after SIGTERM, as the host will use it (ConfigMap, else the default).
    grace_ms = setting(cluster_config, default_config, "server.shutdown_grace_ms")
    pre_stop = host_container.get("lifecycle", {}).get("preStop")
    assert pre_stop, "no preStop: the pod would stop accepting before propeller sees it leave the Endpoints"
    if "sleep" in pre_stop:
        sleep_s = int(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert posix(command[0]).name == "sleep", "preStop should be a sleep, found %r" % command
        sleep_s = int(command[1])
    assert sleep_s >= 2, "a preStop sleep under 2 s is too short for Endpoints updates to spread"
    period = pod.get("terminationGracePeriodSeconds", 30)
    assert period > grace_ms / 1000 + sleep_s, (
        "terminationGracePeriodSeconds %d does not cover preStop %d s + shutdown grace %.1f s" % (
            period, sleep_s, grace_ms / 1000))


def test_rollout_keeps_capacity(deployment):
    assert deployment["spec"].get("replicas", 1) >= 2, "one replica cannot drain without an outage"
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
    assert rolling.get("maxUnavailable") == 0, "a rollout must start new pods before draining old ones"


# ---------------------------------------------------------------------------------------------
# Labels, kustomize


def test_selectors_match_the_pod_labels(base_docs, deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def covered(selector, what):
        assert selector, "%s has an empty selector" % what
        wrong = {k: v for k, v in selector.items() if labels.get(k) != v}
        assert not wrong, "%s selects %r, which the pods do not carry" % (what, wrong)

    covered(deployment["spec"]["selector"]["matchLabels"], "the Deployment")
    covered(one_of_kind(base_docs, "Service", BASE)["spec"]["selector"], "the Service")
    covered(one_of_kind(base_docs, "PodDisruptionBudget", BASE)["spec"]["selector"]["matchLabels"], "the PDB")
    for c in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        covered(c["labelSelector"]["matchLabels"], "a topology spread constraint")


def test_service_account_exists(base_docs, pod):
    account = one_of_kind(base_docs, "ServiceAccount", BASE)
    assert pod.get("serviceAccountName") == account["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_example_secret(pod):
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    resources = set(kustomization["resources"])
    manifests = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    # Applying the kustomization again must never replace real credentials with placeholders.
    assert "secret.yaml" not in resources, "the example Secret must not be applied by kustomize"
    assert resources == manifests - {"secret.yaml"}, "kustomization.yaml resources %s, files %s" % (
        sorted(resources), sorted(manifests))
    images = {i["name"] for i in kustomization.get("images", [])}
    for c in pod.get("initContainers", []) + pod["containers"]:
        assert c["image"] in images, "container %s uses image %r, which kustomization.yaml does not set" % (
            c["name"], c["image"])


def test_overlay_builds_on_the_base():
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    for resource in overlay["resources"]:
        assert (OVERLAY / resource / "kustomization.yaml").is_file() or (OVERLAY / resource).is_file(), resource
    assert (OVERLAY / overlay["resources"][0]).resolve() == BASE.resolve()
    assert overlay.get("namespace"), "the overlay must set the namespace propeller's endpoint names"


def test_shared_plugins_component_replaces_the_plugin_volume(pod, host_container, deployment, cluster_config,
                                                             default_config):
    component = yaml.safe_load((SHARED_PLUGINS / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    claims = [d for r in component["resources"] for d in read_yaml_docs(SHARED_PLUGINS / r)
              if d["kind"] == "PersistentVolumeClaim"]
    assert len(claims) == 1
    assert "ReadWriteMany" in claims[0]["spec"]["accessModes"], "replicas share the volume: ReadWriteMany"
    patches = [read_yaml_docs(SHARED_PLUGINS / p["path"])[0] for p in component["patches"]]
    assert len(patches) == 1 and patches[0]["kind"] == "Deployment"
    assert patches[0]["metadata"]["name"] == deployment["metadata"]["name"], "the patch targets another Deployment"
    patched = patches[0]["spec"]["template"]["spec"]["volumes"]
    plugin_volume = mount_for(host_container, setting(cluster_config, default_config, "loader.plugin_dir"))["name"]
    assert [v["name"] for v in patched] == [plugin_volume], "the patch must replace the plugin volume %r" % plugin_volume
    assert "emptyDir" in patched[0] and patched[0]["emptyDir"] is None, "the patch must drop the emptyDir"
    assert patched[0]["persistentVolumeClaim"]["claimName"] == claims[0]["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# FlytePropeller


def test_propeller_endpoint_reaches_the_service(propeller, service, host_container, cluster_config, default_config):
    enabled = propeller["tasks"]["task-plugins"]["enabled-plugins"]
    assert "connector-service" in enabled, "propeller's connector-service plugin is not enabled"
    connector = propeller["plugins"]["connector-service"]["defaultConnector"]
    m = re.fullmatch(r"k8s://([a-z0-9-]+)\.([a-z0-9-]+):(\d+)", connector["endpoint"])
    assert m, "endpoint %r is not k8s://<service>.<namespace>:<port>" % connector["endpoint"]
    name, namespace, port = m.group(1), m.group(2), int(m.group(3))
    assert name == service["metadata"]["name"], "propeller dials Service %r, the Service is %r" % (
        name, service["metadata"]["name"])
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert namespace == overlay["namespace"], "propeller looks in namespace %r, the overlay installs into %r" % (
        namespace, overlay["namespace"])
    # The resolver dials each ready pod's IP on this port: it must be the host's gRPC port.
    assert port == setting(cluster_config, default_config, "server.port") == container_port(host_container, "grpc")
    assert port in [p["port"] for p in service["spec"]["ports"]]
    assert json.loads(connector["defaultServiceConfig"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    unknown = set(connector.get("timeouts", {})) - PROPELLER_TIMEOUT_KEYS
    assert not unknown, "propeller has no timeout named %s" % sorted(unknown)


def test_propeller_tls_setting_matches_the_host(propeller, cluster_config):
    insecure = propeller["plugins"]["connector-service"]["defaultConnector"]["insecure"]
    assert isinstance(insecure, bool)
    tls = cluster_config.get("server", {}).get("tls")
    assert insecure == (not tls), "propeller insecure=%s but the host %s TLS" % (insecure, "has" if tls else "has no")


# ---------------------------------------------------------------------------------------------
# The image


def test_image_exposes_the_configured_ports(dockerfile, container_config, cluster_config, default_config):
    image_ports = {setting(container_config, default_config, "server.port"),
                   setting(container_config, default_config, "server.metrics_port")}
    cluster_ports = {setting(cluster_config, default_config, "server.port"),
                     setting(cluster_config, default_config, "server.metrics_port")}
    assert dockerfile.exposed_ports() == image_ports, "EXPOSE %s, config/container.toml listens on %s" % (
        sorted(dockerfile.exposed_ports()), sorted(image_ports))
    assert image_ports == cluster_ports, "the image and the ConfigMap use different ports"


def test_image_runs_as_the_manifests_non_root_user(dockerfile, pod):
    user = dockerfile.final_last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "USER %r: use a numeric id, so runAsNonRoot can verify it" % user
    assert int(uid) != 0, "the image runs as root"
    security = pod.get("securityContext", {})
    assert security.get("runAsNonRoot") is True
    assert security.get("runAsUser") == int(uid), "the pod runs as %r, the image as %s" % (security.get("runAsUser"), uid)
    if gid:
        assert security.get("runAsGroup") == int(gid)
        assert security.get("fsGroup") == int(gid), "volumes must belong to the image's group"


def test_image_plugin_volume_is_the_configured_plugin_dir(dockerfile, container_config, cluster_config, default_config):
    image_plugin_dir = posix(setting(container_config, default_config, "loader.plugin_dir"))
    assert image_plugin_dir in dockerfile.volumes(), "VOLUME %s does not include plugin_dir %s" % (
        [str(v) for v in dockerfile.volumes()], image_plugin_dir)
    assert image_plugin_dir == posix(setting(cluster_config, default_config, "loader.plugin_dir")), (
        "the image and the ConfigMap use different plugin directories")
    # The image's work dir is on the container's disk (the layer), never inside the volume.
    work_dir = posix(setting(container_config, default_config, "loader.work_dir"))
    assert image_plugin_dir not in work_dir.parents and work_dir != image_plugin_dir


def test_image_command_reads_the_copied_config(dockerfile, host_container, config_file_path):
    command = dockerfile.command()
    assert any(posix(word).name == "agent-host" for word in command), "the image does not run agent-host: %r" % command
    assert "serve" in command, "the image's default command is not `serve`: %r" % command
    image_config = config_path_in(command)
    copied = [dest for sources, dest, _ in dockerfile.copies() if "config/container.toml" in sources]
    assert copied, "the Dockerfile does not install config/container.toml"
    assert posix(copied[0]) == image_config, "CMD reads %s, config/container.toml goes to %s" % (image_config, copied[0])
    assert image_config == config_file_path, "the Deployment reads %s, the image %s" % (config_file_path, image_config)


def test_image_toolchain_is_the_pinned_one(dockerfile):
    channel = tomllib.loads((REPO / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    build = [s for s in dockerfile.stages if s["image"].startswith("rust:")]
    assert build, "no build stage FROM rust:<version>"
    version = build[0]["image"].split(":", 1)[1].split("-")[0]
    assert version == channel, "the image builds with Rust %s, rust-toolchain.toml pins %s" % (version, channel)
    final = dockerfile.final["image"]
    assert final.startswith("debian:") and final.endswith("-slim"), "final stage %s: a small glibc image" % final
    # Same Debian release: the binaries link against the glibc they run with.
    release = build[0]["image"].rsplit("-", 1)[1]
    assert final == "debian:%s-slim" % release, "built on %s, runs on %s" % (build[0]["image"], final)


def dockerignore_regex(pattern):
    """A .dockerignore pattern as a regex: `*` and `?` stay within one path element, `**` spans any."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            c = pattern[i]
            out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
            i += 1
    return out


def dockerignore_excludes(patterns, path):
    """Whether .dockerignore `patterns` leave `path` out of the build context (a pattern that
    matches a directory leaves out everything below it; the last matching pattern wins)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_build_inputs():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "config/default.toml", "config/container.toml",
              "host/src/main.rs", "proto/build.rs", "plugin-api/abi/Cargo.toml", "plugins/echo/src/lib.rs",
              "tests/Cargo.toml", "tests/src/lib.rs", "tests/fixtures/good/Cargo.toml"]
    for path in needed:
        assert (REPO / path).exists(), "%s is gone: update this list" % path
        assert not dockerignore_excludes(patterns, path), ".dockerignore leaves out %s, which the build needs" % path
    for path in ["target/release/agent-host", ".venv/bin/python", ".git/HEAD", "tests/conformance/x/__pycache__/a.pyc"]:
        assert dockerignore_excludes(patterns, path), ".dockerignore sends %s to the builder" % path


# ---------------------------------------------------------------------------------------------
# The operator's guide


def test_operations_guide_explains_every_metric_and_the_endpoint(propeller):
    guide = OPERATIONS.read_text()
    missing = [m for m in METRICS if m not in guide]
    assert not missing, "deploy/OPERATIONS.md does not explain %s" % missing
    endpoint = propeller["plugins"]["connector-service"]["defaultConnector"]["endpoint"]
    assert endpoint in guide, "deploy/OPERATIONS.md does not show propeller's endpoint %s" % endpoint
