"""The deployment files: Dockerfile, .dockerignore, docker-compose.yml, deploy/ (supervisor,
Kubernetes, the health check) and mrq-config.example.py.

Docker cannot run on the project's machines (no engine), so the image is never built here:
these tests check the files instead, with the parsers that matter (PyYAML, supervisord's own,
`docker compose config` / `docker-compose config` when installed, and mrq's own command-line and
settings parsers for every command and MRQ_* variable they use), and run the health check script
against real workers, a real dashboard and the test servers.
"""

from __future__ import annotations

import fnmatch
import getpass
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mrq.config import DASHBOARD, ENV_PREFIX, OPTIONS, OPTIONS_BY_NAME, WORKER, Settings, build_parser, load_settings
from mrq.queue import raw_queue_config
from mrq.scheduler import validate_schedule
from mrq.testing.stack import free_port
from mrq.testing.workers import CommandProcess, command_env

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
EXAMPLE_CONFIG = ROOT / "mrq-config.example.py"


# --- helpers ----------------------------------------------------------------------------------------------


def mrq_settings_from(command: list[str], env: dict[str, str]) -> Settings:
    """Parse an mrq command line (mrq-worker / mrq-dashboard) and its MRQ_* environment exactly as
    the command would (no config file): raises ConfigError on anything it would refuse."""
    program = Path(command[0]).name
    scope = {"mrq-worker": WORKER, "mrq-dashboard": DASHBOARD}[program]
    parser = build_parser(scope, prog=program)
    settings, _ = load_settings(command[1:], scope=scope, env=env, parser=parser, default_file=False)
    return settings


def assert_mrq_env(env: dict[str, str], where: str) -> None:
    for name in env:
        assert name.startswith(ENV_PREFIX), f"{where}: {name} is not an MRQ_* variable"
        key = name[len(ENV_PREFIX):].lower()
        assert key in OPTIONS_BY_NAME, f"{where}: {name} is not an mrq setting (no option {key!r})"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def option_pairs(command: list[str]) -> dict[str, str]:
    return {flag: value for flag, value in itertools.pairwise(command) if flag.startswith("--")}


def kubernetes_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's env, secret references replaced by a plausible value of the right kind."""
    secrets = {"redis": "redis+sentinel://127.0.0.1:26379/mymaster", "mongodb": "mongodb://127.0.0.1/mrq",
               "dashboard-auth": "admin:secret", "admin-token": "a-long-random-token"}
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mrq", f"{item['name']}: secret {ref['name']}"
            env[item["name"]] = secrets[ref["key"]]
    return env


def image_tag_ok(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# --- docker-compose.yml ----------------------------------------------------------------------------------


def test_compose_services_images_and_redis_settings() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "mongo", "worker", "dashboard"}
    assert services["mongo"]["image"] == "mongo:7"
    assert services["redis"]["image"] == "redis:7"
    redis_command = services["redis"]["command"]
    assert redis_command[0] == "redis-server"
    options = option_pairs(redis_command)
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert services["worker"]["image"] == services["dashboard"]["image"] == "mrq:local"
    assert services["worker"]["build"] == services["dashboard"]["build"] == "."
    assert "redis-data:/data" in services["redis"]["volumes"]  # the AOF lives on a volume
    assert "mongo-data:/data/db" in services["mongo"]["volumes"]
    # only the dashboard is published, and only on the host's loopback
    assert [s for s, conf in services.items() if conf.get("ports")] == ["dashboard"]
    assert all(port.startswith("127.0.0.1:") for port in services["dashboard"]["ports"])


def test_compose_worker_command_and_settings() -> None:
    worker = compose()["services"]["worker"]
    command, env = worker["command"], compose_env(worker)
    assert command[0] == "mrq-worker"
    assert_mrq_env(env, "worker")
    settings = mrq_settings_from(command, env)
    assert settings.processes == 2 and settings.greenlets == 20
    assert settings.queues == ["default"]
    assert settings.redis == "redis://redis:6379/0" and settings.mongodb_jobs == "mongodb://mongo:27017/mrq"
    assert settings.admin_port == 8000
    assert settings.scheduler
    paths = {entry.path for entry in validate_schedule(settings.scheduler_tasks)}
    assert "mrq.basetasks.cleaning.RequeueLostJobs" in paths
    assert worker["stop_signal"] == "SIGTERM" and worker["init"] is True
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > 30, "the worker parent waits up to 30 s for its processes after SIGTERM"
    depends = worker["depends_on"]
    assert depends == {"redis": {"condition": "service_healthy"}, "mongo": {"condition": "service_healthy"}}


def test_compose_dashboard_command_and_auth_from_the_environment() -> None:
    dashboard = compose()["services"]["dashboard"]
    command, env = dashboard["command"], compose_env(dashboard)
    assert command[0] == "mrq-dashboard"
    assert_mrq_env(env, "dashboard")
    # the password is never in the file: compose substitutes it, and refuses to start without it
    assert re.fullmatch(r"\$\{MRQ_DASHBOARD_AUTH:\?[^}]+\}", env["MRQ_DASHBOARD_AUTH"])
    settings = mrq_settings_from(command, {**env, "MRQ_DASHBOARD_AUTH": "admin:secret"})
    assert settings.dashboard_bind == "0.0.0.0" and settings.dashboard_port == 5555
    assert settings.dashboard_auth == "admin:secret"
    assert dashboard["ports"] == [f"127.0.0.1:{settings.dashboard_port}:{settings.dashboard_port}"]


def test_compose_healthchecks() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert services["mongo"]["healthcheck"]["test"][1] == "mongosh"
    assert services["worker"]["healthcheck"]["test"][1:] == ["mrq-healthcheck", "worker"]
    assert services["dashboard"]["healthcheck"]["test"][1:] == ["mrq-healthcheck", "dashboard"]
    # the worker check needs the admin server, which the worker's own settings turn on
    assert compose_env(services["worker"])["MRQ_ADMIN_PORT"] != "0"


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_validates_with_docker_compose(tmp_path: Path) -> None:
    tool = compose_command()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (Debian: apt-get install "
                    "docker-compose); the file is still checked by the other tests of this module")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    args = [*tool, "--project-directory", str(ROOT), "-f", str(COMPOSE), "config"]
    done = subprocess.run([*args, "-q"], capture_output=True, text=True, env={**env, "MRQ_DASHBOARD_AUTH": "a:b"},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run([*args, "-q"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "MRQ_DASHBOARD_AUTH" in refused.stderr


# --- Dockerfile and .dockerignore ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes) or \
                (pattern.startswith("**/") and any(fnmatch.fnmatchcase(t, candidates[1]) for t in tails)):
            ignored = not negate
    return ignored


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    froms = [(i, arg) for i, (op, arg) in enumerate(instructions) if op == "FROM"]
    for _, arg in froms:
        image = arg.split()[0]
        assert image_tag_ok(image), f"FROM {image}: pin a tag (never latest)"
        assert image.startswith("python:3.11-slim"), image
    final = instructions[froms[-1][0]:]
    users = [arg for op, arg in final if op == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert [op for op, _ in final].index("USER") > max(i for i, (op, _) in enumerate(final) if op == "RUN"), \
        "USER must come after the last RUN"
    healthchecks = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "mrq-healthcheck" in healthchecks[0]
    uid = re.search(r"useradd .*--uid (\d+)", " ".join(arg for op, arg in final if op == "RUN"))
    assert uid, "the user is created with a fixed uid (the Kubernetes manifests run as it)"
    assert f"runAsUser: {uid.group(1)}" in (KUBERNETES / "worker.yaml").read_text()


def test_dockerfile_copies_only_files_the_build_context_has() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for op, arg in dockerfile_instructions():
        if op != "COPY" or "--from=" in arg:
            continue
        sources = [token for token in shlex.split(arg) if not token.startswith("--")][:-1]
        copied.extend(sources)
    assert {"pyproject.toml", "setup.py", "README.md", "mrq", "dashboard", "deploy/healthcheck.py"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for secret in (".git", ".venv", "mrq-config.py", "tests/test_deploy.py", "bench/.cache/x"):
        assert dockerignored(secret, patterns), f"{secret} should stay out of the build context"


def test_package_data_ships_every_non_python_file() -> None:
    """The image installs a wheel, not the checkout: a Lua script or template missing from the
    package data breaks `import mrq` (or the dashboard) there and nowhere else."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data = setuptools["package-data"]
    for folder, package in (("mrq", "mrq"), ("dashboard", "mrq_dashboard")):  # setup.py: installed names
        base = ROOT / folder
        for path in base.rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(base).as_posix()
            owner = package
            for sub in path.relative_to(base).parents:  # the closest package that declares data
                dotted = ".".join((package, *sub.parts)) if sub.parts else package
                if dotted in package_data:
                    owner, relative = dotted, path.relative_to(base / sub).as_posix()
                    break
            globs = package_data.get(owner, [])
            assert any(fnmatch.fnmatchcase(relative, g) for g in globs), \
                f"{path.relative_to(ROOT)} is not in [tool.setuptools.package-data] {owner} = {globs}"


# --- Kubernetes ----------------------------------------------------------------------------------------------


def test_kubernetes_manifests() -> None:
    docs = kubernetes_documents()
    assert all(doc["apiVersion"] and doc["kind"] for doc in docs)
    find(docs, "ConfigMap", "mrq-config")
    worker = find(docs, "Deployment", "mrq-worker")
    dashboard = find(docs, "Deployment", "mrq-dashboard")
    service = find(docs, "Service", "mrq-dashboard")

    for deployment in [d for d in docs if d["kind"] == "Deployment"]:
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert image_tag_ok(container["image"]), container["image"]
            env = container_env(container)
            assert_mrq_env(env, f"{deployment['metadata']['name']}/{container['name']}")
            mrq_settings_from(container["command"], env)  # a command line mrq accepts
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert mounts["/app/mrq-config.py"]["subPath"] == "mrq-config.py"
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes[mounts["/app/mrq-config.py"]["name"]]["configMap"]["name"] == "mrq-config"

    container = worker["spec"]["template"]["spec"]["containers"][0]
    settings = mrq_settings_from(container["command"], container_env(container))
    assert settings.admin_ip == "0.0.0.0", "Prometheus scrapes the pod's IP, not its loopback"
    env = {e["name"]: e for e in container["env"]}
    assert env["MRQ_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "admin-token", \
        "an admin server reachable from the network needs its token (live job stacks)"
    assert container["livenessProbe"]["exec"]["command"] == ["mrq-healthcheck", "worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == settings.admin_port
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.admin_port)
    for deployment in [d for d in docs if d["kind"] == "Deployment"]:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            if env.get("MRQ_ADMIN_IP", {}).get("value") not in (None, "127.0.0.1"):
                assert "MRQ_ADMIN_TOKEN" in env, deployment["metadata"]["name"]

    container = dashboard["spec"]["template"]["spec"]["containers"][0]
    settings = mrq_settings_from(container["command"], container_env(container))
    assert settings.dashboard_bind == "0.0.0.0" and settings.dashboard_auth == "admin:secret"
    assert container["readinessProbe"]["exec"]["command"] == ["mrq-healthcheck", "dashboard"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.dashboard_port
    pod_labels = dashboard["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert ports[service["spec"]["ports"][0]["targetPort"]] == settings.dashboard_port


def test_kubernetes_config_map_is_a_valid_mrq_config(tmp_path: Path) -> None:
    config = find(kubernetes_documents(), "ConfigMap", "mrq-config")
    path = tmp_path / "mrq-config.py"
    path.write_text(config["data"]["mrq-config.py"])
    settings, _ = load_settings([], env={}, config_file=path, default_file=False)
    entries = validate_schedule(settings.scheduler_tasks)
    assert {e.path.rsplit(".", 1)[0] for e in entries} == {"mrq.basetasks.cleaning"}
    assert settings.tasks["mrq.basetasks"]["queue"] == "maintenance"
    # the scheduler pod listens on that queue
    scheduler = find(kubernetes_documents(), "Deployment", "mrq-scheduler")["spec"]["template"]["spec"]
    command = scheduler["containers"][0]["command"]
    assert mrq_settings_from(command, {}).queues == ["maintenance"] and "--scheduler" in command


# --- supervisor ----------------------------------------------------------------------------------------------


def test_supervisor_example_is_read_by_supervisord(tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    # Machine-specific values only: the user that exists here, a log directory that exists here.
    text = (ROOT / "deploy" / "supervisor" / "mrq.conf").read_text()
    assert "user=mrq" in text and "/var/log/mrq/" in text
    text = text.replace("user=mrq", f"user={getpass.getuser()}").replace("/var/log/mrq/", f"{tmp_path}/")
    (tmp_path / "mrq.conf").write_text(text)
    (tmp_path / "supervisord.conf").write_text(
        f"[supervisord]\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
        f"[include]\nfiles={tmp_path}/mrq.conf\n")
    options = ServerOptions()
    options.configfile = str(tmp_path / "supervisord.conf")
    options.process_config(do_usage=False)
    processes = {p.name: p for group in options.process_group_configs for p in group.process_configs}
    assert set(processes) == {"mrq-worker-0", "mrq-worker-1", "mrq-scheduler", "mrq-dashboard"}
    admin_ports = set()
    for name, process in processes.items():
        command = shlex.split(process.command)
        env = dict(process.environment or {})
        assert_mrq_env(env, name)
        settings = mrq_settings_from(command, env)
        assert settings.processes == 0, f"{name}: supervisord supervises already"
        if name.startswith("mrq-worker"):
            admin_ports.add(settings.admin_port)
            assert process.stopsignal == 15 and process.stopwaitsecs >= 30 and process.killasgroup
    assert admin_ports == {8000, 8001}  # one admin port per process


# --- deploy/healthcheck.py -----------------------------------------------------------------------------------


def healthcheck(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], env=command_env(settings, env),
                          capture_output=True, text=True, timeout=30, cwd=ROOT / "deploy")


def test_healthcheck_of_a_worker(mrq_settings: Settings, worker_factory: Any) -> None:
    port = free_port()
    token_port = free_port()
    guarded = worker_factory("--admin_port", str(token_port), "--admin_ip", "0.0.0.0",
                             env={"MRQ_ADMIN_TOKEN": "adm1n-t0ken"})
    assert "without --admin_token" not in guarded.output()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{token_port}/report", timeout=5)
    assert refused.value.code == 401
    refused.value.close()
    assert healthcheck(mrq_settings, "worker", "--port", str(token_port)).returncode == 1  # no token: refused
    done = healthcheck(mrq_settings, "worker", "--port", str(token_port), env={"MRQ_ADMIN_TOKEN": "adm1n-t0ken"})
    assert done.returncode == 0, done.stdout + done.stderr
    guarded.stop()
    open_worker = worker_factory("--admin_port", str(free_port()), "--admin_ip", "0.0.0.0")
    assert "without --admin_token" in open_worker.output()  # a loud line when it is reachable and open
    open_worker.stop()
    worker = worker_factory("--admin_port", str(port))
    done = healthcheck(mrq_settings, "worker", "--port", str(port))
    assert done.returncode == 0 and "worker" in done.stdout, done.stdout + done.stderr
    # the default mode is the worker check when MRQ_ADMIN_PORT is set (the image's HEALTHCHECK)
    assert healthcheck(mrq_settings, env={"MRQ_ADMIN_PORT": str(port)}).returncode == 0
    worker.stop()
    done = healthcheck(mrq_settings, "worker", "--port", str(port))
    assert done.returncode == 1 and "unhealthy" in done.stdout
    assert "admin port" in healthcheck(mrq_settings, "worker").stdout  # none configured


class DashboardProcess(CommandProcess):
    module = "mrq_dashboard.cli"


def test_healthcheck_of_the_dashboard_with_its_credentials(mrq_settings: Settings) -> None:
    port = free_port()
    auth = {"MRQ_DASHBOARD_AUTH": "admin:s3cret", "MRQ_DASHBOARD_PORT": str(port)}
    dashboard = DashboardProcess(mrq_settings, env=auth, cwd=ROOT)
    try:
        dashboard.start("listening on")
        done = healthcheck(mrq_settings, "dashboard", env=auth)
        assert done.returncode == 0 and "dashboard ok" in done.stdout, done.stdout + done.stderr
        done = healthcheck(mrq_settings, "dashboard", env={**auth, "MRQ_DASHBOARD_AUTH": "admin:wrong"})
        assert done.returncode == 1 and "HTTP 401" in done.stdout
    finally:
        dashboard.close()


def test_healthcheck_of_the_stores(mrq_settings: Settings) -> None:
    done = healthcheck(mrq_settings, "stores")
    assert done.returncode == 0 and "reachable" in done.stdout, done.stdout + done.stderr
    assert healthcheck(mrq_settings).returncode == 0  # the default without an admin port
    closed = f"redis://127.0.0.1:{free_port()}/0"
    done = healthcheck(mrq_settings, "stores", env={"MRQ_REDIS": closed, "MRQ_REDIS_TIMEOUT": "1"})
    assert done.returncode == 1 and "cannot reach Redis" in done.stdout and done.stdout.count("\n") == 1


# --- mrq-config.example.py -----------------------------------------------------------------------------------


def test_example_config_lists_every_setting_with_its_default() -> None:
    text = EXAMPLE_CONFIG.read_text()
    missing = [o.file_name for o in OPTIONS if not re.search(rf"^{o.file_name} = ", text, re.MULTILINE)]
    assert not missing, f"mrq-config.example.py lacks {', '.join(missing)}: add each with its default and a comment"
    lines = text.splitlines()
    for option in OPTIONS:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{option.file_name} = "))
        assert "#" in lines[index] or lines[index - 1].startswith("#"), f"{option.file_name}: no comment"
    settings, _ = load_settings([], env={}, config_file=EXAMPLE_CONFIG, default_file=False)
    examples = {"tasks", "scheduler_tasks", "raw_queues"}
    changed = {o.name for o in OPTIONS if settings[o.name] != o.default}
    assert changed == examples, f"not at their defaults: {sorted(changed - examples)}"
    assert not settings.extra  # every uppercase name is a setting


def test_example_config_examples_are_valid() -> None:
    settings, _ = load_settings([], env={}, config_file=EXAMPLE_CONFIG, default_file=False)
    assert len(validate_schedule(settings.scheduler_tasks)) == len(settings.scheduler_tasks) >= 4
    for name in settings.raw_queues:
        config = raw_queue_config(settings.raw_queues, name)
        job = config.job_factory("https://example.com/")  # type: ignore[arg-type]
        assert job == {"path": "tasks.crawl.Fetch", "params": {"url": "https://example.com/"}}
    assert settings.metric_hook is None
    namespace: dict[str, Any] = {}
    exec(compile(EXAMPLE_CONFIG.read_text(), str(EXAMPLE_CONFIG), "exec"), namespace)
    assert namespace["send_to_statsd"]("jobs.status.success", incr=2, queue="default") is None


def test_keda_autoscaling_replaces_mrq_agent() -> None:
    """The example that replaces mrq-agent (docs/migrating-from-mrq.md) scales the worker
    Deployment on the Redis lists of exactly the queues its command names, under mrq's key layout."""
    from mrq.storage.keys import Keys

    path = KUBERNETES / "autoscaling" / "keda.yaml"
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    scaled = find(docs, "ScaledObject", "mrq-worker")
    auth = find(docs, "TriggerAuthentication", "mrq-redis")
    worker = find(kubernetes_documents(), "Deployment", "mrq-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    values = set(option_pairs(command).values())
    queues = [arg for arg in command[1:] if not arg.startswith("--") and arg not in values]
    assert queues == ["high", "default"]
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["listName"] for t in triggers] == [Keys("mrq").queue_ids(q) for q in queues]
    for trigger in triggers:
        assert trigger["type"] == "redis" and int(trigger["metadata"]["listLength"]) > 0
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"][0]["name"] == "mrq"  # the Secret worker.yaml reads
    assert scaled["spec"]["minReplicaCount"] >= 1  # delayed retries need a running worker
