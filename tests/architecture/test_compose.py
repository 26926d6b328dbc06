"""docker-compose.yml checked without a Docker engine: it validates against the Compose specification's JSON
Schema, and everything it names resolves (variables listed in .env.example, files, build arguments, the
services it waits for), with the production properties the deployment promises."""

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = ("collector", "risk", "execution", "deployer")
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?][^}]*)?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_when_validated_then_it_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "infra" / "compose" / "compose-spec.json").read_text())
    # the schema names draft 2019-09 (with a trailing "#" that jsonschema does not look up by itself)
    jsonschema.Draft201909Validator(schema).validate(compose())  # raises with the path of what does not fit


def test_compose_when_its_variables_are_read_then_each_secret_is_required_and_listed_in_env_example() -> None:
    text = COMPOSE.read_text()
    used = {name: rest or "" for name, rest in VARIABLE.findall(text)}
    listed = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE))
    assert set(used) <= listed, f"not in .env.example: {sorted(set(used) - listed)}"
    for name, rest in used.items():
        if name != "QMP_BIND":  # the only one with a default (the loopback)
            assert rest.startswith(":?"), f"${{{name}}} may be empty: compose must refuse to start without it"
    example = (ROOT / ".env.example").read_text()
    assert not re.search(r"^[A-Z_]*(PASSWORD|SECRET|KEY)=\S", example, flags=re.MULTILINE), "a default secret"


def test_compose_when_its_files_and_build_args_are_read_then_each_exists() -> None:
    spec = compose()
    dockerfile = (ROOT / "Dockerfile").read_text()
    arguments = set(re.findall(r"^ARG\s+([A-Z_]+)", dockerfile, flags=re.MULTILINE))
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            elif not source.startswith("$"):
                assert source in spec["volumes"], f"{name} uses the volume {source}, which is not declared"
        build = service.get("build")
        if build:
            assert set(build.get("args", {})) <= arguments, f"{name} passes a build argument the Dockerfile lacks"
            assert build["args"]["SERVICE"] in SERVICES
        for needed in service.get("depends_on", {}):
            assert needed in spec["services"], f"{name} waits for {needed}, which is no service"


def test_compose_when_it_starts_then_servers_are_healthy_first_and_services_are_checked_and_confined() -> None:
    spec = compose()["services"]
    for server in ("nats", "timescaledb"):
        assert spec[server]["healthcheck"]["test"], server
        assert ":latest" not in spec[server]["image"]  # pinned: a restart never pulls another version
    assert spec["init"]["depends_on"] == {"nats": {"condition": "service_healthy"},
                                          "timescaledb": {"condition": "service_healthy"}}
    for name in SERVICES:
        service = spec[name]
        assert service["depends_on"]["init"] == {"condition": "service_completed_successfully"}, name
        assert service["depends_on"]["nats"] == {"condition": "service_healthy"}, name
        assert "qmp_service_status" in " ".join(service["healthcheck"]["test"]), name
        assert service["read_only"] is True and service["mem_limit"] and service["cpus"], name
        assert service["environment"]["QMP_METRICS_PORT"] == "9464"  # what the health check and Prometheus read
    assert "USER qmp" in (ROOT / "Dockerfile").read_text()
    assert all(":latest" not in service.get("image", "") for service in spec.values())
    # The dashboard: the CLI's image, after init, on the loopback by default, confined like the services.
    dashboard = spec["dashboard"]
    assert dashboard["command"][:2] == ["/app/.venv/bin/qmp", "dashboard"]
    assert dashboard["build"]["args"]["WITH_PACKAGES"] == "qmp-ops"
    assert dashboard["depends_on"]["init"] == {"condition": "service_completed_successfully"}
    assert dashboard["ports"] == ["${QMP_BIND:-127.0.0.1}:8501:8501"] and dashboard["read_only"] is True
    assert "8501/login" in " ".join(dashboard["healthcheck"]["test"])


CLUSTER = ROOT / "docker-compose.cluster.yml"


def test_compose_cluster_when_laid_over_the_base_then_three_nodes_replicated_and_every_client_given_all() -> None:
    schema = json.loads((ROOT / "infra" / "compose" / "compose-spec.json").read_text())
    overlay = yaml.safe_load(CLUSTER.read_text())
    jsonschema.Draft201909Validator(schema).validate(overlay)
    base = compose()
    services = overlay["services"]
    # Three nodes on the cluster config, each named apart, each reachable under the name its peers route to.
    cluster_conf = (ROOT / "infra" / "nats" / "cluster.conf").read_text()
    routes = set(re.findall(r"nats-route://([a-z0-9-]+):6222", cluster_conf))
    assert "nats-1" in services["nats"]["networks"]["default"]["aliases"]  # the base file's server is node 1
    names = {"nats-1", "nats-2", "nats-3"}
    assert routes == names
    server_names = {base["services"]["nats"]["environment"]["NATS_SERVER_NAME"],
                    services["nats-2"]["environment"]["NATS_SERVER_NAME"],
                    services["nats-3"]["environment"]["NATS_SERVER_NAME"]}
    assert len(server_names) == 3
    for node in ("nats", "nats-2", "nats-3"):
        assert services[node]["command"] == ["-c", "/etc/nats/cluster.conf"]
        env = {**base["services"].get(node, {}).get("environment", {}), **services[node]["environment"]}
        assert env["QMP_NATS_TLS_CA"] == "/certs/ca.pem"  # the routes verify their peers against the CA
    for node in ("nats-2", "nats-3"):
        assert "healthcheck" in services[node] and any(v.startswith("./infra/nats/server.conf") for v in
                                                       services[node]["volumes"])
    # The streams on three replicas; every client knows the three nodes and starts once they are healthy.
    assert services["init"]["command"][-2:] == ["--replicas", "3"]
    for client in ("init", "dashboard", *SERVICES):
        urls = services[client]["environment"]["QMP_NATS_URL"].split(",")
        assert {url.split("//")[1].split(":")[0] for url in urls} == names, client
        assert set(services[client]["depends_on"]) == {"nats-2", "nats-3"}
    text = CLUSTER.read_text()
    listed = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE))
    for name, rest in VARIABLE.findall(text):
        assert name in listed and rest.startswith(":?"), name
    for volume in [v for node in ("nats-2", "nats-3") for v in services[node]["volumes"]]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
        elif not source.startswith("$"):
            assert source in overlay["volumes"], source
