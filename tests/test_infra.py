"""infra/ agrees with the code, is formatted, and passes checkov.

The Google provider cannot be downloaded everywhere these tests run, so `terraform validate` is
out of reach; instead the .tf files are parsed with python-hcl2 and compared with what the code
reads and defaults to.
"""

from __future__ import annotations

import ast
import base64
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import hcl2

from webhook_relay import config, routing
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
    return Terraform(variables, local_values, resources)


def _list(value: object) -> list[object]:
    if value is None:
        return []
    assert isinstance(value, list), f"expected a list, got {value!r}"
    return list(value)


def _function() -> Body:
    return terraform().resource("google_cloudfunctions2_function")


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


def test_entry_point_is_defined_at_top_level_of_main_py() -> None:
    build = _block(_function(), "build_config")
    assert build.get("entry_point") == "receive_webhook"

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
    assert "receive_webhook" in names, "functions/main.py defines no top-level receive_webhook"


def test_runtime_is_a_supported_python() -> None:
    runtime = str(_block(_function(), "build_config").get("runtime"))
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


def test_environment_uses_only_names_the_code_reads() -> None:
    names = _environment_names(_block(_function(), "service_config"))
    assert names, "the function sets no environment variables"
    unknown = names - set(config.ENVIRONMENT)
    assert not unknown, f"infra/ sets variables the code never reads: {sorted(unknown)}"


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


def test_ttl_policy_is_on_the_field_the_code_writes() -> None:
    tf = terraform()
    field = tf.resource("google_firestore_field")
    assert field.get("field") == TTL_FIELD
    assert tf.resolve(field.get("collection")) == _settings_defaults().dedup_collection
    assert "ttl_config" in field, "the TTL policy (ttl_config {}) is missing"
    # Records are read by key only; indexes on the timestamp would cost every write.
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


def test_project_wide_roles_are_only_datastore_user() -> None:
    roles = {
        str(body.get("role"))
        for body in terraform().resources.get("google_project_iam_member", {}).values()
    }
    # Pub/Sub and Secret Manager access is granted per topic and per secret instead.
    assert roles == {"roles/datastore.user"}
    for kind in ("google_project_iam_binding", "google_project_iam_policy"):
        assert kind not in terraform().resources, f"{kind} would take over the project's IAM"
