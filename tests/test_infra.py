"""infra/ agrees with the code, is formatted, and passes checkov.

The Google provider cannot be downloaded everywhere these tests run, so `terraform validate` is
out of reach; instead the .tf files are parsed with python-hcl2 and compared with what the code
reads and defaults to.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import hcl2
import pytest

from webhook_relay import config, jobs, reconcile, reconcile_app, routing
from webhook_relay.claim import TTL_FIELD

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".ci" / "checkov.sh"

Body = dict[str, object]

# `${local.name}` or `${var.name}`: the only interpolations the checks below resolve.
_REFERENCE = re.compile(r"\$\{(local|var)\.([A-Za-z_][A-Za-z0-9_-]*)\}")
_SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


def _unquote(text: str) -> str:
    # python-hcl2 8 keeps the quotes of string literals and block labels; older versions drop them.
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _plain(value: object) -> object:
    """python-hcl2's output with quotes and its `__is_block__`/`__comments__` markers removed."""
    if isinstance(value, dict):
        return {
            _unquote(str(key)): _plain(item)
            for key, item in value.items()
            if not (str(key).startswith("__") and str(key).endswith("__"))
        }
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def _expression(value: object) -> str:
    """The text of a whole-value expression (`${...}`), whitespace collapsed."""
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return " ".join(text.split())


def _mapping(value: object, what: str) -> Body:
    assert isinstance(value, dict), f"{what}: expected a block or object, got {value!r}"
    return {str(key): item for key, item in value.items()}


def _block(body: Body, name: str) -> Body:
    """The single nested block `name` of a resource (python-hcl2 gives a list of blocks)."""
    blocks = body.get(name)
    assert isinstance(blocks, list), f"no {name} block"
    assert len(blocks) == 1, f"expected one {name} block, found {len(blocks)}"
    return _mapping(blocks[0], name)


def _blocks(body: Body, name: str) -> list[Body]:
    blocks = body.get(name, [])
    assert isinstance(blocks, list), f"{name} is not a block"
    return [_mapping(block, name) for block in blocks]


@dataclass(frozen=True)
class Terraform:
    variables: dict[str, Body]
    locals: Body
    resources: dict[str, dict[str, Body]]
    outputs: dict[str, Body]

    def resource(self, kind: str, name: str | None = None) -> Body:
        found = self.resources.get(kind, {})
        if name is None:
            assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
            return next(iter(found.values()))
        assert name in found, f"no {kind}.{name} in infra/"
        return found[name]

    def default(self, variable: str) -> object:
        assert variable in self.variables, f"no variable {variable!r} in infra/"
        return self.variables[variable].get("default")

    def resolve(self, value: object) -> str:
        """`value` with every `${local.x}` and `${var.x}` (their defaults) substituted."""
        text = str(value)
        for _ in range(10):
            expanded = _REFERENCE.sub(self._lookup, text)
            if expanded == text:
                return text
            text = expanded
        raise AssertionError(f"references nest too deep in {value!r}")

    def _lookup(self, match: re.Match[str]) -> str:
        kind, name = match.groups()
        value = self.locals.get(name) if kind == "local" else self.default(name)
        assert isinstance(value, str | int), f"{kind}.{name} is not a plain value: {value!r}"
        return str(value)


@cache
def terraform() -> Terraform:
    variables: dict[str, Body] = {}
    local_values: Body = {}
    resources: dict[str, dict[str, Body]] = {}
    outputs: dict[str, Body] = {}
    files = sorted(INFRA.glob("*.tf"))
    assert files, f"no .tf files in {INFRA}"
    for path in files:
        with path.open(encoding="utf-8") as handle:
            parsed = _mapping(_plain(hcl2.load(handle)), path.name)
        for entry in _list(parsed.get("variable")):
            for name, body in _mapping(entry, "variable").items():
                variables[name] = _mapping(body, f"variable {name}")
        for entry in _list(parsed.get("locals")):
            local_values.update(_mapping(entry, "locals"))
        for entry in _list(parsed.get("resource")):
            for kind, named in _mapping(entry, "resource").items():
                for name, body in _mapping(named, kind).items():
                    resources.setdefault(kind, {})[name] = _mapping(body, f"{kind}.{name}")
        for entry in _list(parsed.get("output")):
            for name, body in _mapping(entry, "output").items():
                outputs[name] = _mapping(body, f"output {name}")
    return Terraform(variables, local_values, resources, outputs)


def _list(value: object) -> list[object]:
    if value is None:
        return []
    assert isinstance(value, list), f"expected a list, got {value!r}"
    return list(value)


def _function(name: str = "relay") -> Body:
    return terraform().resource("google_cloudfunctions2_function", name)


def _settings_defaults() -> config.Settings:
    # Any one verification method lets load_settings run; everything else stays at its default.
    secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    return config.load_settings({"WEBHOOK_SIGNING_SECRETS": secret})


# --- formatting and static checks ------------------------------------------------------------


def test_terraform_is_formatted() -> None:
    binary = shutil.which("terraform")
    assert binary is not None, "the terraform binary is not on PATH; install Terraform >= 1.5"
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(INFRA)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, (
        "terraform fmt -check failed; run `terraform fmt -recursive infra`\n"
        + result.stdout
        + result.stderr
    )


def test_checkov_passes() -> None:
    result = subprocess.run(
        ["bash", str(CHECKOV)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert result.returncode == 0, f"checkov failed:\n{result.stdout}\n{result.stderr}"


def test_every_checkov_skip_gives_a_reason() -> None:
    for path in sorted(INFRA.glob("*.tf")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = _SKIP.search(line)
            if match is None:
                continue
            reason = (match.group(2) or "").strip()
            assert len(reason) >= 20, f"{path.name}:{number}: checkov skip without a real reason"


# --- the function ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "entry_point"), [("relay", "receive_webhook"), ("reconcile", "reconcile")]
)
def test_entry_point_is_defined_at_top_level_of_main_py(function: str, entry_point: str) -> None:
    build = _block(_function(function), "build_config")
    assert build.get("entry_point") == entry_point

    tree = ast.parse((ROOT / "functions" / "main.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    assert entry_point in names, f"functions/main.py defines no top-level {entry_point}"


@pytest.mark.parametrize("function", ["relay", "reconcile"])
def test_runtime_is_a_supported_python(function: str) -> None:
    runtime = str(_block(_function(function), "build_config").get("runtime"))
    match = re.fullmatch(r"python3(\d+)", runtime)
    assert match is not None, f"runtime {runtime!r} is not python3NN"
    assert int(match.group(1)) >= 11, f"{runtime} is older than the package's Python 3.11"


def test_timeout_leaves_room_for_the_ten_second_answer() -> None:
    service = _block(_function(), "service_config")
    timeout = service.get("timeout_seconds")
    assert isinstance(timeout, int), "timeout_seconds must be a literal number"
    assert 10 < timeout <= 60, f"timeout_seconds {timeout}: the code answers within 10 s"


def _environment_names(service: Body) -> set[str]:
    tf = terraform()
    value = service.get("environment_variables")
    if isinstance(value, dict):
        names = {str(key) for key in value}
    else:
        # A comprehension over locals: the names are the keys of the locals it reads.
        names = set()
        for name in re.findall(r"local\.([A-Za-z_][A-Za-z0-9_]*)", str(value)):
            names.update(str(key) for key in _mapping(tf.locals.get(name), f"local.{name}"))
    names.update(
        str(block.get("key")) for block in _blocks(service, "secret_environment_variables")
    )
    return names


def _reconcile_reads() -> set[str]:
    """What `reconcile` reads: its own list, and the receiver's names its wiring reads too."""
    wiring = (ROOT / "functions" / "webhook_relay" / "reconcile_app.py").read_text("utf-8")
    shared = {name for name in config.ENVIRONMENT if f'"{name}"' in wiring}
    return set(reconcile_app.ENVIRONMENT) | shared


@pytest.mark.parametrize("function", ["relay", "reconcile"])
def test_environment_uses_only_names_the_function_reads(function: str) -> None:
    names = _environment_names(_block(_function(function), "service_config"))
    assert names, "the function sets no environment variables"
    reads = set(config.ENVIRONMENT) if function == "relay" else _reconcile_reads()
    unknown = names - reads
    assert not unknown, f"infra/ sets variables {function} never reads: {sorted(unknown)}"


def test_variables_both_functions_read_have_the_same_value() -> None:
    tf = terraform()
    relay = _mapping(tf.locals.get("function_environment"), "function_environment")
    reconcile = _mapping(tf.locals.get("reconcile_environment"), "reconcile_environment")
    # Both claim the same job records and publish to the same topics.
    for name in set(config.ENVIRONMENT) & _reconcile_reads():
        if name in relay or name in reconcile:
            assert relay.get(name) == reconcile.get(name), f"{name} differs between the functions"


def test_signing_secrets_file_is_inside_the_secret_volume() -> None:
    tf = terraform()
    service = _block(_function(), "service_config")
    assert "WEBHOOK_SIGNING_SECRETS_FILE" in _environment_names(service)
    environment = _mapping(tf.locals.get("function_environment"), "local.function_environment")
    secrets_file = tf.resolve(environment["WEBHOOK_SIGNING_SECRETS_FILE"])

    volume = _block(service, "secret_volumes")
    mount = tf.resolve(volume.get("mount_path")).rstrip("/")
    assert secrets_file.startswith(mount + "/"), f"{secrets_file} is not under {mount}"
    versions = _blocks(volume, "versions")
    paths = {tf.resolve(version.get("path")): version.get("version") for version in versions}
    relative = secrets_file.removeprefix(mount + "/")
    assert relative in paths, f"no secret version is mounted at {secrets_file}"
    # A pinned version would need a redeploy on every rotation.
    assert paths[relative] == "latest"

    secret = re.fullmatch(
        r"\$\{google_secret_manager_secret\.(\w+)\.secret_id\}", str(volume.get("secret"))
    )
    assert secret is not None, "the volume must mount the secret managed in infra/"
    tf.resource("google_secret_manager_secret", secret.group(1))


def test_no_secret_value_in_terraform() -> None:
    # A secret version created by Terraform would put the signing secret into the state.
    assert "google_secret_manager_secret_version" not in terraform().resources


def test_environment_passes_the_variables_through() -> None:
    environment = _mapping(terraform().locals.get("function_environment"), "function_environment")
    expected = {
        "RELAY_TOPIC_PREFIX": "var.topic_prefix",
        "RELAY_DEDUP_COLLECTION": "var.dedup_collection",
        "RELAY_DEDUP_TTL_HOURS": "var.dedup_ttl_hours",
        "RELAY_CLAIM_LEASE_SECONDS": "var.claim_lease_seconds",
        "RELAY_ROUTES": "jsonencode(var.routes)",
        "GEMINI_JWT_AUDIENCE": "var.jwt_audiences",
        "GEMINI_JWT_ISSUERS": "var.jwt_issuers",
    }
    for name, reference in expected.items():
        assert reference in str(environment.get(name)), f"{name} does not use {reference}"


# --- defaults shared with the code ----------------------------------------------------------


def test_variable_defaults_match_the_code() -> None:
    tf = terraform()
    settings = _settings_defaults()
    assert tf.default("topic_prefix") == routing.DEFAULT_TOPIC_PREFIX == settings.topic_prefix
    assert tf.default("dedup_collection") == settings.dedup_collection
    assert tf.default("dedup_ttl_hours") == settings.dedup_ttl_hours
    assert tf.default("claim_lease_seconds") == settings.claim_lease_seconds
    assert tf.default("routes") is None, "routes must default to the code's own table"


@pytest.mark.parametrize("resource", ["delivery_expiry", "job_expiry"])
def test_ttl_policy_is_on_the_field_the_code_writes(resource: str) -> None:
    tf = terraform()
    field = tf.resource("google_firestore_field", resource)
    if resource == "delivery_expiry":
        assert field.get("field") == TTL_FIELD
        assert tf.resolve(field.get("collection")) == _settings_defaults().dedup_collection
    else:
        assert field.get("field") == jobs.TTL_FIELD
        assert tf.resolve(field.get("collection")) == jobs.DEFAULT_COLLECTION
    assert "ttl_config" in field, "the TTL policy (ttl_config {}) is missing"
    # Never queried by expiry; indexes on the timestamp would cost every write.
    assert _block(field, "index_config") == {}


# --- topics ---------------------------------------------------------------------------------


def test_default_topics_match_the_code() -> None:
    tf = terraform()
    prefix = str(tf.default("topic_prefix"))

    families = tf.locals.get("default_route_families")
    assert isinstance(families, list), "local.default_route_families must be a list literal"
    comprehension = re.fullmatch(
        r'\{for (\w+) in local\.default_route_families : "(.*?)" => "(.*?)"\}',
        _expression(tf.locals.get("default_routes")),
    )
    assert comprehension is not None, "local.default_routes is not the expected for expression"
    each, key_template, topic_template = comprehension.groups()

    def render(template: str, family: object) -> str:
        return template.replace("${" + each + "}", str(family)).replace(
            "${var.topic_prefix}", prefix
        )

    table = {render(key_template, family): render(topic_template, family) for family in families}
    assert table == routing.default_routes(prefix)

    unrouted = tf.resolve(tf.locals.get("unrouted_topic"))
    assert unrouted == routing.unrouted_topic(prefix)

    assert _expression(tf.locals.get("routes")) == (
        "var.routes == null ? local.default_routes : var.routes"
    )
    topic_ids = _expression(tf.locals.get("topic_ids"))
    assert "values(local.routes)" in topic_ids
    assert "local.unrouted_topic" in topic_ids
    topics = sorted({*table.values(), unrouted})
    assert topics == sorted([*routing.default_routes(prefix).values(), unrouted])
    assert topics == routing.parse_routes(None, prefix).topics()

    topic = tf.resource("google_pubsub_topic", "relay")
    assert _expression(topic.get("for_each")) == "local.topic_ids"


# --- least privilege ------------------------------------------------------------------------


def _project_roles() -> dict[str, set[str]]:
    """Unconditional project-wide roles by member, `for_each` sets of roles expanded."""
    granted: dict[str, set[str]] = {}
    for body in terraform().resources.get("google_project_iam_member", {}).values():
        if "condition" in body:
            continue
        role = str(body.get("role"))
        roles = (
            set(re.findall(r'"(roles/[^"]+)"', str(body.get("for_each"))))
            if role == "${each.value}"
            else {role}
        )
        granted.setdefault(str(body.get("member")), set()).update(roles)
    return granted


def test_project_wide_roles_are_only_what_each_account_needs() -> None:
    # Pub/Sub and Secret Manager access is granted per topic and per secret, Firestore per
    # database, image pushes per repository.
    assert _project_roles() == {"${local.build_member}": {"roles/logging.logWriter"}}
    for kind in ("google_project_iam_binding", "google_project_iam_policy"):
        assert kind not in terraform().resources, f"{kind} would take over the project's IAM"


@pytest.mark.parametrize("grant", ["relay_datastore", "reconcile_datastore"])
def test_firestore_access_is_conditioned_to_the_relay_database(grant: str) -> None:
    tf = terraform()
    body = tf.resource("google_project_iam_member", grant)
    assert body.get("role") == "roles/datastore.user"
    assert _block(body, "condition").get("expression") == "${local.database_condition}"
    condition = str(tf.locals.get("database_condition")).replace("\\", "")
    assert condition == (
        'resource.name == "projects/${var.project_id}/databases/${var.firestore_database}"'
    )


def test_build_pushes_only_to_a_repository_terraform_manages_and_cleans() -> None:
    tf = terraform()
    for name in ("relay", "reconcile"):
        build = _block(_function(name), "build_config")
        assert build.get("docker_repository") == (
            "${google_artifact_registry_repository.functions.id}"
        )
    writer = tf.resource("google_artifact_registry_repository_iam_member", "build_writer")
    assert writer.get("role") == "roles/artifactregistry.writer"
    assert writer.get("member") == "${local.build_member}"
    assert writer.get("repository") == "${google_artifact_registry_repository.functions.name}"
    repository = tf.resource("google_artifact_registry_repository", "functions")
    assert repository.get("format") == "DOCKER"
    assert repository.get("cleanup_policy_dry_run") is False
    policies = {str(p.get("action")): p for p in _blocks(repository, "cleanup_policies")}
    assert set(policies) == {"KEEP", "DELETE"}
    assert _block(policies["KEEP"], "most_recent_versions").get("keep_count") >= 2  # type: ignore[operator]
    assert _block(policies["DELETE"], "condition").get("older_than")


# --- a first apply in a fresh project -------------------------------------------------------

# `type.name` of a resource, `data.type.name`, or `local.name`, wherever an expression names it.
_NODE = re.compile(
    r"\b(data\.[a-z0-9_]+\.[A-Za-z0-9_-]+|local\.[A-Za-z0-9_]+|[a-z0-9]+_[a-z0-9_]+\.[A-Za-z0-9_-]+)"
)


def _dependencies(node: str) -> set[str]:
    """Every resource `node` (`type.name` or `local.name`) depends on, directly or not."""
    tf = terraform()
    known = {f"{kind}.{name}" for kind, named in tf.resources.items() for name in named}

    def direct(name: str) -> set[str]:
        if name.startswith("local."):
            body: object = tf.locals.get(name.removeprefix("local."))
        else:
            kind, _, label = name.partition(".")
            body = tf.resources.get(kind, {}).get(label)
        found = set(_NODE.findall(str(body)))
        return {item for item in found if item in known or item.startswith("local.")}

    seen: set[str] = set()
    todo = [node]
    while todo:
        for item in direct(todo.pop()) - seen:
            seen.add(item)
            todo.append(item)
    return seen - {node}


def test_build_runs_as_a_dedicated_account_unless_one_is_given() -> None:
    tf = terraform()
    build = _block(_function(), "build_config")
    assert build.get("service_account") == "${local.build_service_account}"
    chosen = _expression(tf.locals.get("build_service_account"))
    assert chosen.startswith("var.build_service_account != null ? var.build_service_account :")
    assert "google_service_account.build[*].id" in chosen
    account = tf.resource("google_service_account", "build")
    assert "var.build_service_account == null" in str(account.get("count"))

    # Reading the source object: only in our source bucket, which holds nothing else, and in
    # Cloud Functions' copy of it.
    reader = tf.resource("google_project_iam_member", "build_source_reader")
    assert reader.get("role") == "roles/storage.objectViewer"
    assert reader.get("member") == "${local.build_member}"
    expression = str(_block(reader, "condition").get("expression"))
    assert "for bucket in local.source_buckets" in expression
    assert 'resource.name == \\"projects/_/buckets/${bucket}\\"' in expression
    assert 'resource.name.startsWith(\\"projects/_/buckets/${bucket}/\\")' in expression
    buckets = str(tf.locals.get("source_buckets"))
    source = _block(_block(build, "source"), "storage_source")
    assert str(source.get("bucket")).strip("${}") in buckets
    assert "gcf-v2-sources-${data.google_project.this.number}-${var.region}" in buckets


def test_every_api_the_resources_use_is_enabled() -> None:
    tf = terraform()
    services = set(
        re.findall(
            r'"([a-z]+\.googleapis\.com)"',
            str(tf.resource("google_project_service").get("for_each")),
        )
    )
    # iam: service accounts; cloudbuild and artifactregistry: the function's build.
    needed = {"iam", "cloudbuild", "artifactregistry", "cloudfunctions", "run", "storage"}
    needed |= {"firestore", "pubsub", "secretmanager", "logging", "monitoring"}
    if "google_cloud_scheduler_job" in tf.resources:
        needed.add("cloudscheduler")
    assert {f"{name}.googleapis.com" for name in needed} <= services


def test_every_resource_waits_for_the_apis_it_calls() -> None:
    tf = terraform()
    wait = tf.resource("time_sleep", "apis_enabled")
    assert "google_project_service.relay" in str(wait.get("triggers"))
    for kind, named in tf.resources.items():
        if not kind.startswith("google_") or kind == "google_project_service":
            continue
        for name in named:
            assert "time_sleep.apis_enabled" in _dependencies(f"{kind}.{name}"), (
                f"{kind}.{name} may be created before its API answers"
            )


def test_functions_wait_until_their_grants_have_propagated() -> None:
    tf = terraform()
    grants = {
        f"{kind}.{name}"
        for kind, named in tf.resources.items()
        if kind.endswith("_iam_member")
        for name, body in named.items()
        # Grants to the functions' own accounts, not to service agents or invokers.
        if str(body.get("member"))
        in {"${local.runtime_member}", "${local.build_member}", "${local.reconcile_member}"}
    }
    assert grants, "no grants to the runtime or build account"
    for name, function in tf.resources["google_cloudfunctions2_function"].items():
        waits = [
            str(item).removeprefix("${").removesuffix("}")
            for item in _list(function.get("depends_on"))
            if str(item).startswith("${time_sleep.")
        ]
        waited = set().union(*(_dependencies(wait) for wait in waits), waits)
        assert "time_sleep.iam_propagated" in waited, f"{name}: builds before its grants"
        # reconcile waits for the receiver's wait too (it shares the build account).
        own = grants if name == "reconcile" else {g for g in grants if "reconcile" not in g}
        assert own <= waited, f"{name} does not wait for {sorted(own - waited)}"


def test_archive_is_reproducible_across_machines() -> None:
    archive = _data_archive()
    # A developer's umask or checkout must not change the hash and redeploy the function.
    assert archive.get("output_file_mode") == "0666"


def _data_archive() -> Body:
    with (INFRA / "function.tf").open(encoding="utf-8") as handle:
        parsed = _mapping(_plain(hcl2.load(handle)), "function.tf")
    for entry in _list(parsed.get("data")):
        named = _mapping(entry, "data").get("archive_file")
        if named is not None:
            return _mapping(_mapping(named, "archive_file").get("source"), "archive_file.source")
    raise AssertionError("no data.archive_file.source in infra/function.tf")


def _glob(pattern: str) -> re.Pattern[str]:
    # archive_file's doublestar globs: `**/` any directories (or none), `*` within one name.
    text = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    return re.compile(text.replace(r"\*", "[^/]*") + "$")


def test_archive_ships_no_command_line_helper_or_cache() -> None:
    excludes = _list(_data_archive().get("excludes"))
    required = {
        "webhook_relay/cli/**",
        "webhook_relay/emulators.py",
        "webhook_relay/signing.py",
        "**/__pycache__/**",
        "**/*.pyc",
        "**/*.egg-info/**",
    }
    assert required <= set(excludes), f"missing excludes: {sorted(required - set(excludes))}"

    patterns = [_glob(str(pattern)) for pattern in excludes]
    source = ROOT / "functions"
    shipped = [
        path
        for path in source.rglob("*")
        if path.is_file()
        and not any(p.match(path.relative_to(source).as_posix()) for p in patterns)
    ]
    names = {path.relative_to(source).as_posix() for path in shipped}
    assert "main.py" in names
    assert "webhook_relay/relay.py" in names
    assert not any(name.startswith("webhook_relay/cli/") for name in names)
    excluded_modules = ("webhook_relay.cli", "webhook_relay.emulators", "webhook_relay.signing")
    for path in shipped:
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                assert not module.startswith(excluded_modules), (
                    f"{path.relative_to(source)} imports {module}, which the zip leaves out"
                )


def test_threads_match_the_per_instance_concurrency() -> None:
    environment = _mapping(terraform().locals.get("function_environment"), "function_environment")
    assert environment.get("THREADS") == "${tostring(var.concurrency)}"
    service = _block(_function(), "service_config")
    assert service.get("max_instance_request_concurrency") == "${var.concurrency}"


def test_readme_deploy_steps_work_in_a_fresh_project() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    deploy = readme[readme.index("## Deploying with Terraform") :]
    deploy = deploy[: deploy.index("\n## ", 1)]
    # Plan-time reads of the project need this API before Terraform can enable anything.
    assert "cloudresourcemanager.googleapis.com" in deploy
    # Organisations with domain-restricted sharing refuse the allUsers invoker binding.
    assert "iam.allowedPolicyMemberDomains" in deploy
    commands = [line for line in deploy.splitlines() if re.search(r"\bgcloud\s+\w", line)]
    assert commands, "no gcloud command in the deploy section"
    for line in commands:
        if re.search(r"\bgcloud auth \w", line):
            continue  # credentials, not a project's resources
        assert "--project" in line, f"gcloud command without --project: {line.strip()}"
    # The Google provider reads Application Default Credentials, not gcloud's login.
    assert "gcloud auth application-default login" in deploy
    assert 'gcloud auth application-default set-quota-project "$PROJECT"' in deploy
    # An unset key would be stored as an empty version.
    assert ': "${GEMINI_API_KEY:?' in deploy
    assert deploy.index(': "${GEMINI_API_KEY:?') < deploy.index("printf '%s' \"$GEMINI_API_KEY\"")
    # The placeholder signing secret expires by itself.
    assert "printf 'whsec_%s;expires=%s\\n'" in deploy
    assert "../.venv/bin/webhook-relay register" in deploy
    assert "about 13 minutes" in deploy
    # Without an organisation policy administrator: the invoker IAM check, not allUsers.
    assert "--no-invoker-iam-check" in deploy
    assert "terraform state rm google_secret_manager_secret.signing_secrets" in deploy
    assert "google_secret_manager_secret.gemini_api_key" in deploy
    assert "create_firestore_database = false" in deploy
    assert "backlog is\nlost" in deploy or "backlog is lost" in deploy
    assert 'attributes.um_team = \\"search\\"' in deploy


# --- the dashboard --------------------------------------------------------------------------

# Google's own metrics the dashboard and alerts may chart (Cloud Run and Pub/Sub system metrics).
GOOGLE_METRICS = {
    "run.googleapis.com/request_count",
    "run.googleapis.com/container/instance_count",
    "pubsub.googleapis.com/topic/send_message_operation_count",
    "pubsub.googleapis.com/subscription/dead_letter_message_count",
    "pubsub.googleapis.com/subscription/num_undelivered_messages",
}
_TEMPLATE_VALUE = re.compile(r"\$\{jsonencode\(([a-z_]+)(?:\.([a-z_0-9]+))?\)\}")
_METRIC_TYPE = re.compile(r'metric\.type="([^"]+)"')
_LOG_METRIC_NAME = re.compile(r'\$\{google_logging_metric\.(\w+)(?:\["(\w+)"\])?\.name\}')


def _log_metric_names() -> dict[str, str]:
    """`resource` or `resource["key"]` -> the metric's name, with variables at their defaults."""
    tf = terraform()
    names = {}
    for name, body in tf.resources["google_logging_metric"].items():
        template = str(body.get("name"))
        if "each.key" not in template:
            names[name] = tf.resolve(template)
            continue
        keys = re.fullmatch(r"\$\{local\.(\w+)\}", str(body.get("for_each")))
        assert keys is not None, f"google_logging_metric.{name}: for_each is not a local map"
        for key in _mapping(tf.locals.get(keys.group(1)), keys.group(1)):
            names[f'{name}["{key}"]'] = tf.resolve(template.replace("${each.key}", key))
    return names


def _metric_key(match: re.Match[str]) -> str:
    name, key = match.groups()
    return f'{name}["{key}"]' if key else str(name)


def _filter_text(value: object) -> str:
    """A filter expression as the dashboard receives it, resources' names resolved."""
    tf = terraform()
    names = _log_metric_names()
    text = str(value)
    for _ in range(10):
        expanded = _LOG_METRIC_NAME.sub(lambda match: names[_metric_key(match)], text)
        expanded = re.sub(r"\$\{local\.(\w+)\}", lambda m: str(tf.locals[m.group(1)]), expanded)
        if expanded == text:
            break
        text = expanded
    return tf.resolve(text).replace('\\"', '"')


def _dashboard() -> dict[str, object]:
    tf = terraform()
    dashboard = tf.resource("google_monitoring_dashboard", "relay")
    call = _expression(dashboard.get("dashboard_json"))
    assert call.startswith('templatefile("${path.module}/dashboard.json.tftpl"'), call
    assert "filters = local.dashboard_filters" in call
    filters = _mapping(tf.locals.get("dashboard_filters"), "local.dashboard_filters")
    template = (INFRA / "dashboard.json.tftpl").read_text(encoding="utf-8")

    def render(match: re.Match[str]) -> str:
        name, key = match.groups()
        if name == "title":
            return json.dumps(tf.default("name_prefix"))
        assert name == "filters", f"unknown template value {name}"
        assert key in filters, f"the template uses filters.{key}, which infra/ does not define"
        return json.dumps(_filter_text(filters[key]))

    rest = _TEMPLATE_VALUE.sub("", template)
    assert "${" not in rest, "the template holds an interpolation the test cannot render"
    assert "%{" not in rest, "the template holds a directive the test cannot render"
    rendered = _TEMPLATE_VALUE.sub(render, template)
    parsed = json.loads(rendered)
    assert isinstance(parsed, dict)
    return parsed


def _filters_in(value: object) -> list[str]:
    if isinstance(value, dict):
        found = [str(value["filter"])] if "filter" in value else []
        return found + [f for item in value.values() for f in _filters_in(item)]
    if isinstance(value, list):
        return [f for item in value for f in _filters_in(item)]
    return []


def test_dashboard_is_valid_json_naming_only_known_metrics() -> None:
    dashboard = _dashboard()
    filters = _filters_in(dashboard)
    assert filters, "the dashboard charts nothing"
    defined = {f"logging.googleapis.com/user/{name}" for name in _log_metric_names().values()}
    charted = set()
    for text in filters:
        types = _METRIC_TYPE.findall(text)
        assert len(types) == 1, f"a filter must name one metric type: {text}"
        charted.add(types[0])
    unknown = charted - defined - GOOGLE_METRICS
    assert not unknown, f"the dashboard charts metrics nobody defines: {sorted(unknown)}"


def test_dashboard_charts_what_operators_ask_for() -> None:
    text = json.dumps(_dashboard())
    names = _log_metric_names()
    for wanted in (
        f"user/{names['responses']}",  # deliveries per minute by answer status
        "REDUCE_PERCENTILE_50",
        "REDUCE_PERCENTILE_99",  # latency
        "metric.label.signature",  # 401s by claimed scheme
        'metric.labels.status=\\"unavailable\\"',  # 503s
        "topic/send_message_operation_count",  # unrouted
        "subscription/dead_letter_message_count",
        "container/instance_count",
        "user/" + names['reconcile["missed_event_reconciled"]'],  # the safety net at work
    ):
        assert wanted in text, f"the dashboard lacks {wanted}"
    url = str(terraform().outputs["dashboard_url"].get("value"))
    assert "google_monitoring_dashboard.relay.id" in url


def test_dashboard_metrics_read_fields_the_function_logs() -> None:
    tf = terraform()
    logged = (ROOT / "functions" / "webhook_relay" / "http.py").read_text(encoding="utf-8")
    latency = tf.resource("google_logging_metric", "latency")
    assert latency.get("value_extractor") == "EXTRACT(jsonPayload.latency_ms)"
    assert _block(latency, "metric_descriptor").get("value_type") == "DISTRIBUTION"
    for name in ("latency", "responses"):
        extractors = _mapping(
            tf.resource("google_logging_metric", name).get("label_extractors"), name
        )
        labels = {
            str(b.get("key"))
            for b in _blocks(
                _block(tf.resource("google_logging_metric", name), "metric_descriptor"), "labels"
            )
        }
        assert labels == set(extractors), f"{name}: labels and extractors differ"
        for extractor in [*extractors.values(), latency.get("value_extractor")]:
            field = re.fullmatch(r"EXTRACT\(jsonPayload\.(\w+)\)", str(extractor))
            assert field is not None, extractor
            assert re.search(rf'\b{field.group(1)}\b\s*=|"{field.group(1)}"', logged), (
                f"http.py never logs {field.group(1)}"
            )


# --- reconcile ------------------------------------------------------------------------------


def _members_granted(member: str) -> set[tuple[str, str, str]]:
    """(resource kind, role, what it is on) for every grant to `member`."""
    found = set()
    for kind, named in terraform().resources.items():
        if not kind.endswith(("_iam_member", "_iam_binding")):
            continue
        for body in named.values():
            members = [str(body.get("member"))] + [str(m) for m in _list(body.get("members"))]
            if member in members:
                target = next(
                    (
                        str(body[key])
                        for key in ("topic", "secret_id", "service", "bucket")
                        if key in body
                    ),
                    "project",
                )
                found.add((kind, str(body.get("role")), target))
    return found


def test_reconcile_runs_from_the_same_source() -> None:
    relay = _block(_block(_function("relay"), "build_config"), "source")
    reconcile_source = _block(_block(_function("reconcile"), "build_config"), "source")
    assert relay == reconcile_source
    assert _block(_function("reconcile"), "build_config").get("service_account") == (
        "${local.build_service_account}"
    )


def test_reconcile_account_holds_only_what_reconcile_needs() -> None:
    service = _block(_function("reconcile"), "service_config")
    assert service.get("service_account_email") == "${google_service_account.reconcile.email}"
    assert _members_granted("${local.reconcile_member}") == {
        ("google_project_iam_member", "roles/datastore.user", "project"),
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher", "${each.value.name}"),
        (
            "google_secret_manager_secret_iam_member",
            "roles/secretmanager.secretAccessor",
            "${google_secret_manager_secret.gemini_api_key.secret_id}",
        ),
    }
    publisher = terraform().resource("google_pubsub_topic_iam_member", "reconcile_publisher")
    # The relay's topics, the same set the receiver publishes to.
    assert publisher.get("for_each") == "${google_pubsub_topic.relay}"


def test_only_its_scheduler_job_can_invoke_reconcile() -> None:
    tf = terraform()
    service = _block(_function("reconcile"), "service_config")
    assert service.get("ingress_settings") == "ALLOW_INTERNAL_ONLY"
    invokers = [
        body
        for body in tf.resources.get("google_cloud_run_service_iam_member", {}).values()
        if body.get("service") == "${google_cloudfunctions2_function.reconcile.name}"
    ]
    assert [body.get("member") for body in invokers] == [
        "serviceAccount:${google_service_account.reconcile_invoker.email}"
    ]
    assert invokers[0].get("role") == "roles/run.invoker"
    for kind in ("google_cloud_run_service_iam_binding", "google_cloud_run_service_iam_policy"):
        assert kind not in tf.resources
    assert "allUsers" not in str(tf.resources.get("google_cloudfunctions2_function_iam_member"))
    # The invoker account may do nothing else.
    assert _members_granted("serviceAccount:${google_service_account.reconcile_invoker.email}") == {
        (
            "google_cloud_run_service_iam_member",
            "roles/run.invoker",
            "${google_cloudfunctions2_function.reconcile.name}",
        )
    }

    job = tf.resource("google_cloud_scheduler_job", "reconcile")
    target = _block(job, "http_target")
    uri = "${google_cloudfunctions2_function.reconcile.service_config[0].uri}"
    assert target.get("uri") == uri
    token = _block(target, "oidc_token")
    assert token.get("service_account_email") == (
        "${google_service_account.reconcile_invoker.email}"
    )
    assert token.get("audience") == uri
    assert job.get("schedule") == "${var.reconcile_schedule}"
    assert tf.default("reconcile_schedule") == "*/10 * * * *"


def test_reconcile_outlasts_its_run_budget() -> None:
    tf = terraform()
    service = _block(_function("reconcile"), "service_config")
    assert service.get("timeout_seconds") == "${local.reconcile_timeout_seconds}"
    timeout = tf.locals.get("reconcile_timeout_seconds")
    assert isinstance(timeout, int)
    assert timeout >= reconcile.RUN_BUDGET_SECONDS + reconcile.JOB_SECONDS
    deadline = tf.resource("google_cloud_scheduler_job", "reconcile").get("attempt_deadline")
    assert deadline == "${local.reconcile_timeout_seconds + 20}s"


def test_reconcile_reads_its_api_key_from_the_mounted_secret() -> None:
    tf = terraform()
    service = _block(_function("reconcile"), "service_config")
    environment = _mapping(tf.locals.get("reconcile_environment"), "reconcile_environment")
    key_file = tf.resolve(environment["GEMINI_API_KEY_FILE"])
    assert "GEMINI_API_KEY" not in environment, "the key itself would enter the state"
    volume = _block(service, "secret_volumes")
    assert volume.get("secret") == "${google_secret_manager_secret.gemini_api_key.secret_id}"
    mount = tf.resolve(volume.get("mount_path")).rstrip("/")
    (version,) = _blocks(volume, "versions")
    assert f"{mount}/{tf.resolve(version.get('path'))}" == key_file
    assert version.get("version") == "latest"
    # The receiver never sees the Gemini API key.
    relay_volumes = _blocks(_block(_function("relay"), "service_config"), "secret_volumes")
    assert all("gemini_api_key" not in str(v.get("secret")) for v in relay_volumes)


def test_reconcile_environment_matches_the_code_defaults() -> None:
    tf = terraform()
    environment = _mapping(tf.locals.get("reconcile_environment"), "reconcile_environment")
    for name in (
        "RELAY_PUBLIC_URL",
        "RELAY_JOBS_COLLECTION",
        "RELAY_RECONCILE_GRACE_SECONDS",
        "RELAY_RECONCILE_LOOKBACK_HOURS",
        "RELAY_REENABLE_WEBHOOKS",
        "GOOGLE_CLOUD_PROJECT",
        "RELAY_TOPIC_PREFIX",
        "RELAY_ROUTES",
    ):
        assert name in environment, f"reconcile is not given {name}"
    # The URL Gemini delivers to is the receiver's unless the operator names another: its
    # deterministic Cloud Run URL, known while planning (tfschema checks nothing in an
    # environment is known only after apply).
    assert environment["RELAY_PUBLIC_URL"] == "${local.public_url}"
    assert _expression(tf.locals.get("public_url")) == (
        "coalesce(var.public_url, var.relay_public_url, local.run_url)"
    )
    assert tf.locals.get("run_url") == (
        "https://${var.name_prefix}-${data.google_project.this.number}.${var.region}.run.app"
    )
    assert tf.outputs["function_url"].get("value") == "${local.public_url}"
    assert _function("relay").get("name") == "${var.name_prefix}"
    settings = reconcile_app.load_reconcile_settings({"GOOGLE_CLOUD_PROJECT": "p"})
    assert tf.default("jobs_collection") == settings.store.collection
    assert tf.default("reconcile_grace_seconds") == settings.policy.grace.total_seconds()
    lookback_hours = settings.policy.lookback.total_seconds() / 3600
    assert tf.default("reconcile_lookback_hours") == lookback_hours
    assert tf.default("reenable_webhooks") is settings.policy.reenable_webhooks


def test_reconcile_metrics_count_the_lines_reconcile_logs() -> None:
    tf = terraform()
    source = (ROOT / "functions" / "webhook_relay" / "reconcile.py").read_text("utf-8")
    metrics = _mapping(tf.locals.get("reconcile_metrics"), "reconcile_metrics")
    assert set(metrics) == {"webhook_disabled", "missed_event_reconciled", "reconcile_runs"}
    for name, spec in metrics.items():
        text = str(_mapping(spec, name)["filter"])
        for status in re.findall(r'jsonPayload\.status=\\?"(\w+)\\?"', text):
            assert f'status="{status}"' in source, f"reconcile.py never logs status {status}"
    assert "severity=ERROR" in str(_mapping(metrics["webhook_disabled"], "")["filter"])
    assert "severity=WARNING" in str(_mapping(metrics["missed_event_reconciled"], "")["filter"])
    assert _mapping(metrics["missed_event_reconciled"], "").get("label") == "type"
    assert "event_type=event.type" in source
    assert '"reconcile run"' in source
    assert 'jsonPayload.message=\\"reconcile run\\"' in str(
        _mapping(metrics["reconcile_runs"], "")["filter"]
    )
    alerts = str(tf.locals["alert_policies"])
    for name in metrics:
        assert f'local.user_metric_filter["{name}"]' in alerts, f"no alert on {name}"
    failing = _mapping(_alert_policies()["reconcile_failing"], "reconcile_failing")
    conditions = [_mapping(c, "condition") for c in _list(failing["conditions"])]
    (absent,) = [c for c in conditions if c["absent"] is True]
    assert absent.get("duration") == "1800s"
    assert "5xx" in str(failing)


def _alert_policies() -> Body:
    return _mapping(terraform().locals.get("alert_policies"), "local.alert_policies")


def test_reconcile_alert_sees_scheduler_calls_that_never_reach_it() -> None:
    failing = _mapping(_alert_policies()["reconcile_failing"], "reconcile_failing")
    conditions = [_mapping(c, "condition") for c in _list(failing["conditions"])]
    scheduler = [c for c in conditions if "cloud_scheduler_job" in str(c["filter"])]
    assert len(scheduler) == 1, "no condition on Cloud Scheduler's failed attempts"
    text = str(scheduler[0]["filter"])
    assert "logging.googleapis.com/log_entry_count" in text
    assert "google_cloud_scheduler_job.reconcile.name" in text
    assert 'metric.labels.severity=\\"ERROR\\"' in text
    assert scheduler[0]["absent"] is False


def test_alert_policies_are_one_resource_and_existing_ones_move_into_it() -> None:
    tf = terraform()
    assert list(tf.resources["google_monitoring_alert_policy"]) == ["relay"]
    policy = tf.resource("google_monitoring_alert_policy", "relay")
    assert policy.get("for_each") == "${local.alert_policies}"
    with (INFRA / "alerts.tf").open(encoding="utf-8") as handle:
        parsed = _mapping(_plain(hcl2.load(handle)), "alerts.tf")
    moved = [_mapping(m, "moved") for m in _list(parsed.get("moved"))]
    pairs = {str(m["from"]): str(m["to"]) for m in moved}
    assert pairs == {
        f"${{google_monitoring_alert_policy.{key}}}": (
            f'${{google_monitoring_alert_policy.relay["{key}"]}}'
        )
        for key in _alert_policies()
    }


def test_alerts_wait_for_their_metrics_to_propagate() -> None:
    tf = terraform()
    wait = tf.resource("time_sleep", "metrics_propagate")
    # Log-based metrics can take up to 10 minutes to be usable by an alert policy.
    assert str(wait.get("create_duration")) == "600s"
    assert "time_sleep.metrics_propagate.triggers" in str(tf.locals.get("user_metric_filter"))
    # The metrics, and so the wait, do not wait for the functions' builds.
    for name in tf.resources["google_logging_metric"]:
        waits_for = _dependencies(f"google_logging_metric.{name}")
        assert not any(d.startswith("google_cloudfunctions2_function") for d in waits_for), name


# --- a first apply, and what outlives it ---------------------------------------------------


def test_receiver_is_public_without_an_allusers_binding_by_default() -> None:
    tf = terraform()
    assert tf.default("public_access") == "no_invoker_iam_check"
    disabled = tf.resource("terraform_data", "invoker_iam_check_disabled")
    assert 'var.public_access == "no_invoker_iam_check"' in str(disabled.get("count"))
    (provisioner,) = _list(disabled.get("provisioner"))
    command = str(_mapping(_mapping(provisioner, "provisioner")["local-exec"], "").get("command"))
    assert command.startswith(
        "gcloud run services update ${google_cloudfunctions2_function.relay.name}"
    )
    for flag in ("--no-invoker-iam-check", "--region ${var.region}", "--project ${var.project_id}"):
        assert flag in command
    # Run again after every deploy of the function, which owns its Cloud Run service.
    assert "${google_cloudfunctions2_function.relay.update_time}" in _list(
        disabled.get("triggers_replace")
    )
    binding = tf.resource("google_cloud_run_service_iam_member", "public_invoker")
    assert 'var.public_access == "all_users"' in str(binding.get("count"))
    assert binding.get("member") == "allUsers"


@pytest.mark.parametrize("wait", ["iam_propagated", "reconcile_iam_propagated"])
def test_grants_get_the_documented_propagation_time(wait: str) -> None:
    tf = terraform()
    assert tf.resource("time_sleep", wait).get("create_duration") == (
        "${local.iam_propagation_seconds}s"
    )
    # Google documents about 2 minutes, sometimes 7 or more.
    seconds = tf.locals.get("iam_propagation_seconds")
    assert isinstance(seconds, int)
    assert seconds >= 120


def test_scheduler_region_can_differ_from_the_functions() -> None:
    tf = terraform()
    job = tf.resource("google_cloud_scheduler_job", "reconcile")
    assert job.get("region") == "${local.scheduler_region}"
    assert _expression(tf.locals.get("scheduler_region")) == (
        "coalesce(var.scheduler_region, var.region)"
    )


@pytest.mark.parametrize("secret", ["signing_secrets", "gemini_api_key"])
def test_secrets_survive_a_destroy(secret: str) -> None:
    body = terraform().resource("google_secret_manager_secret", secret)
    assert _block(body, "lifecycle").get("prevent_destroy") is True


def test_pubsub_service_agent_is_created_before_it_is_granted() -> None:
    tf = terraform()
    identity = tf.resource("google_project_service_identity", "pubsub")
    assert identity.get("provider") == "google-beta"
    assert identity.get("service") == "pubsub.googleapis.com"
    assert _expression(tf.locals.get("pubsub_service_agent")) == (
        "google_project_service_identity.pubsub.member"
    )
    for kind, name in (
        ("google_pubsub_topic_iam_member", "dead_letter_publisher"),
        ("google_pubsub_subscription_iam_member", "dead_letter_source_subscriber"),
    ):
        assert tf.resource(kind, name).get("member") == "${local.pubsub_service_agent}"
    subscriber = tf.resource(
        "google_pubsub_subscription_iam_member", "dead_letter_source_subscriber"
    )
    assert "google_pubsub_subscription.filtered" in str(subscriber.get("for_each"))


def test_dynamic_webhooks_reach_the_receiver() -> None:
    tf = terraform()
    environment = _mapping(tf.locals.get("function_environment"), "function_environment")
    assert environment.get("GEMINI_DYNAMIC_WEBHOOKS") == "${tostring(var.dynamic_webhooks)}"
    assert tf.default("dynamic_webhooks") is False
    assert "keyset-ed25519" in str(tf.resource("google_logging_metric", "responses"))


def test_watched_jobs_query_has_its_composite_index() -> None:
    tf = terraform()
    index = tf.resource("google_firestore_index", "jobs_by_checked_at")
    assert index.get("collection") == "${var.jobs_collection}"
    assert index.get("query_scope") == "COLLECTION"
    fields = [(f.get("field_path"), f.get("order")) for f in _blocks(index, "fields")]
    assert fields == [("state", "ASCENDING"), ("checked_at", "ASCENDING")]
    # The query it serves (webhook_relay.jobs): equality/in on state, ordered by checked_at.
    source = (ROOT / "functions" / "webhook_relay" / "jobs.py").read_text("utf-8")
    assert 'FieldFilter("state", "in"' in source
    assert ".order_by(CHECKED_FIELD)" in source
    assert jobs.CHECKED_FIELD == "checked_at"


def test_subscriptions_get_exactly_once_delivery_and_filtered_ones_stand_beside() -> None:
    tf = terraform()
    assert tf.default("exactly_once_delivery") is True
    assert tf.default("filtered_subscriptions") == {}
    for name in ("relay", "filtered"):
        body = tf.resource("google_pubsub_subscription", name)
        assert body.get("enable_exactly_once_delivery") == "${var.exactly_once_delivery}"
        assert _block(body, "dead_letter_policy").get("max_delivery_attempts") == (
            "${var.max_delivery_attempts}"
        )
    filtered = tf.resource("google_pubsub_subscription", "filtered")
    assert filtered.get("for_each") == "${var.filtered_subscriptions}"
    assert filtered.get("name") == "${each.key}"
    assert filtered.get("filter") == "${each.value.filter}"
    # The <topic>-sub subscriptions never get a filter: changing one replaces it.
    assert "filter" not in tf.resource("google_pubsub_subscription", "relay")


def test_plan_warns_about_regions_cloud_build_may_refuse() -> None:
    with (INFRA / "function.tf").open(encoding="utf-8") as handle:
        parsed = _mapping(_plain(hcl2.load(handle)), "function.tf")
    (check,) = [_mapping(c, "check") for c in _list(parsed.get("check"))]
    assert_block = _block(_mapping(check["build_region"], "build_region"), "assert")
    assert "contains(local.build_regions_for_new_projects, var.region)" in str(
        assert_block.get("condition")
    )
    assert set(_list(terraform().locals.get("build_regions_for_new_projects"))) == {
        "us-central1",
        "us-west2",
        "europe-west1",
        "asia-east1",
        "australia-southeast1",
        "southamerica-east1",
    }
    example = (INFRA / "terraform.tfvars.example").read_text(encoding="utf-8")
    assert 'region     = "europe-west1"' in example
