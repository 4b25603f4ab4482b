"""infra/*.tf checked against the providers' own schemas, and evaluated as a plan would evaluate
it, without downloading the providers.

The prebuilt CDKTF/CDKTN provider packages on PyPI are generated from each provider's schema:
inside each wheel, `package/.jsii` holds one interface per resource and nested block (optional or
required, documented enum values) and `package/lib/<resource>/index.js` the snake_case names,
block or attribute, and every readable (computed) attribute. Wheels are pinned by version and
sha256; the schema extracted from each is cached as JSON, one file per resource type, so a rerun
reads only the types infra/ uses.

    python -m tests.support.tfschema [infra-dir]     check against google (and google-beta)
                                                     6.x and 7.x, then evaluate with defaults
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

# Bump when the cached JSON's layout changes.
FORMAT = 1
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "gemini-webhook-relay"
    / "tfschema"
)


@dataclass(frozen=True)
class Package:
    """A pinned provider package: its wheel on PyPI and the provider it describes."""

    dist: str
    version: str
    sha256: str
    provider: str  # "google 6.50", for messages

    @property
    def name(self) -> str:
        """The provider's local name in infra/ ("google", "google-beta", ...)."""
        return self.provider.split()[0]

    @property
    def wheel(self) -> str:
        return f"{self.dist.replace('-', '_')}-{self.version}-py3-none-any.whl"


GOOGLE_6 = Package(
    "cdktf-cdktf-provider-google",
    "16.12.1",
    "88d021c89e1cf2abf2c935716d6548d26fe3da4bed30713d4fa36df1ef137436",
    "google 6.50",
)
GOOGLE_7 = Package(
    "cdktn-provider-google",
    "20.3.1",
    "562d1a5f4d9850be9f43f53b9c1cbb1899f0ce7c8daaf1e7b51181287e82a380",
    "google 7.46",
)
GOOGLE_BETA_6 = Package(
    "cdktf-cdktf-provider-google-beta",
    "16.12.1",
    "6f75be2b8686994fd3074c42f0771df20c928695d88061c265f2cacf74aa5fb1",
    "google-beta 6.50",
)
GOOGLE_BETA_7 = Package(
    "cdktn-provider-google-beta",
    "20.3.1",
    "3ed56bf0f493c431f447b37e4e0e4267896cef014b69c1ee599854ddd6a4df3e",
    "google-beta 7.46",
)
ARCHIVE = Package(
    "cdktf-cdktf-provider-archive",
    "11.0.1",
    "8842f64850b8ea9c16db6dcf09a1a91edd4cbe860ba8aa836e25f9aa624dd574",
    "archive 2.7",
)
TIME = Package(
    "cdktf-cdktf-provider-time",
    "11.0.1",
    "a927bcdf16736d281a0f5640474f8b46cef43c5ff37ee7eca8b79652b5aca134",
    "time 0.13",
)
Node = dict[str, Any]

# The provider sets infra/ is checked against: its version constraints allow both majors.
PROVIDER_SETS = {
    "google 6.x": (GOOGLE_6, GOOGLE_BETA_6, ARCHIVE, TIME),
    "google 7.x": (GOOGLE_7, GOOGLE_BETA_7, ARCHIVE, TIME),
}
# Terraform's built-in provider needs no download; its one resource type infra/ uses.
BUILTIN: dict[str, tuple[str, dict[str, Node]]] = {
    "terraform_data": (
        "TerraformData",
        {
            "TerraformData": {
                "args": {"input": {"required": False}, "triggers_replace": {"required": False}},
                "blocks": {},
                "attrs": {"id": "", "input": "", "output": "", "triggers_replace": ""},
            }
        },
    )
}

# --- extracting the schema from a wheel -------------------------------------------------------

_SEGMENT = re.compile(r"^(?:class (\w+) extends ([\w.]+)|function (\w+)\(struct\)) \{", re.M)
_ENTRY = re.compile(
    r"^\s+(\w+): \{\n\s+value: (.*),\n\s+isBlock: (true|false),\n"
    r'\s+type: "\w+",\n\s+storageClassType: "\w+",\n\s+\},?$',
    re.M,
)
_RESOURCE_TYPE = re.compile(r"terraformResourceType: '(\w+)'")
_GETTER = re.compile(r"this\.(?:get\w*Attribute|interpolationForAttribute)\('(\w+)'\)")
_NESTED = re.compile(r'new ([\w.]+)\(this, "(\w+)"')
_CHILD = re.compile(r"(?<![.\w])([a-z]\w*)ToHclTerraform\b")
_CAMEL = re.compile(r"(?:struct\.|this\._)(\w+)")
_ENUM = re.compile(r"Possible values: \[([^\]]*)\]")


def _upper_first(name: str) -> str:
    return name[:1].upper() + name[1:]


def _jsii_structs(jsii: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Interface name -> {camelCase property: jsii property}."""
    structs: dict[str, dict[str, Any]] = {}
    for kind in jsii["types"].values():
        if kind.get("kind") == "interface" and kind.get("datatype"):
            structs[kind["name"]] = {prop["name"]: prop for prop in kind.get("properties", [])}
    return structs


def _argument(prop: Mapping[str, Any] | None) -> dict[str, Any]:
    if prop is None:
        return {"required": False}
    docs = prop.get("docs", {})
    text = f"{docs.get('summary', '')} {docs.get('remarks', '')}"
    spec: dict[str, Any] = {"required": not prop.get("optional", False)}
    match = _ENUM.search(text)
    if match:
        spec["enum"] = re.findall(r'"([^"]*)"', match.group(1))
    return spec


def _single(prop: Mapping[str, Any] | None) -> bool:
    # A block of at most one is typed as the struct itself; a repeatable one as a collection.
    return prop is not None and "fqn" in prop.get("type", {})


def _module_schema(
    source: str, structs: Mapping[str, dict[str, Any]]
) -> Iterator[tuple[str, str, str, dict[str, Node]]]:
    """(kind "resource"|"data", type, root node name, nodes) for one generated index.js."""
    matches = list(_SEGMENT.finditer(source))
    classes: dict[str, str] = {}
    functions: dict[str, str] = {}
    roots: list[tuple[str, str, str]] = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(source)
        body = source[match.start() : end]
        if match.group(1):
            classes[match.group(1)] = body
            base = match.group(2).split(".")[-1]
            kind = {"TerraformResource": "resource", "TerraformDataSource": "data"}.get(base)
            found = _RESOURCE_TYPE.search(body)
            if kind and found:
                roots.append((kind, found.group(1), match.group(1)))
        elif match.group(3).endswith("ToHclTerraform"):
            functions[_upper_first(match.group(3).removesuffix("ToHclTerraform"))] = body

    nodes: dict[str, Node] = {}

    def nested(name: str) -> None:
        build(name, name, name + "OutputReference", functions.get(name, ""))

    def build(name: str, config: str, reader: str, hcl: str) -> None:
        if name in nodes:
            return
        node: Node = {"args": {}, "blocks": {}, "attrs": {}}
        nodes[name] = node
        props = structs.get(config, {})
        for entry in _ENTRY.finditer(hcl):
            snake, value, is_block = entry.group(1), entry.group(2), entry.group(3) == "true"
            camel = _CAMEL.findall(value)
            prop: dict[str, Any] | None = props.get(camel[-1]) if camel else None
            if is_block:
                child = _CHILD.search(value)
                child_name = _upper_first(child.group(1)) if child else ""
                node["blocks"][snake] = {
                    "node": child_name,
                    "single": _single(prop) or '"struct"' in entry.group(0),
                    "required": prop is not None and not prop.get("optional", False),
                }
                if child_name:
                    nested(child_name)
            else:
                node["args"][snake] = _argument(prop)
        readable = classes.get(reader, "")
        for attribute in _GETTER.findall(readable):
            node["attrs"].setdefault(attribute, "")
        for kind, attribute in _NESTED.findall(readable):
            target = ""
            if "." not in kind:
                for suffix in ("OutputReference", "List", "Map"):
                    if kind.endswith(suffix):
                        target = kind.removesuffix(suffix)
                        break
            node["attrs"][attribute] = target
            if target:
                nested(target)
        for name_ in node["blocks"]:
            node["attrs"].setdefault(name_, node["blocks"][name_]["node"])
        for name_ in node["args"]:
            node["attrs"].setdefault(name_, "")

    for kind, terraform_type, class_name in roots:
        nodes = {}
        hcl = classes[class_name]
        start = hcl.find("synthesizeHclAttributes()")
        build(class_name, class_name + "Config", class_name, hcl[start:])
        yield kind, terraform_type, class_name, nodes


def _download(package: Package) -> bytes:
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / package.wheel
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(wheels),
                f"{package.dist}=={package.version}",
            ],
            check=True,
            timeout=600,
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != package.sha256:
        path.unlink()
        raise RuntimeError(f"{package.wheel}: sha256 {digest}, expected {package.sha256}")
    return data


def _extract(package: Package, target: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(_download(package))) as wheel:
        (inner,) = [name for name in wheel.namelist() if name.endswith(".jsii.tgz")]
        archive = wheel.read(inner)
    jsii: dict[str, Any] | None = None
    sources: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            name = member.name
            is_module = name.startswith("package/lib/") and name.endswith("/index.js")
            if name != "package/.jsii" and not (is_module and name.count("/") == 3):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            text = handle.read().decode("utf-8")
            if name == "package/.jsii":
                jsii = json.loads(text)
            else:
                # The inline source map is most of each file and none of the schema.
                sources.append(text.split("\n//# sourceMappingURL=", 1)[0])
    assert jsii is not None, f"{package.wheel} holds no .jsii"
    structs = _jsii_structs(jsii)
    index: dict[str, dict[str, str]] = {"resource": {}, "data": {}}
    target.mkdir(parents=True)
    for source in sources:
        for kind, terraform_type, root, nodes in _module_schema(source, structs):
            file_name = f"{kind}.{terraform_type}.json"
            index[kind][terraform_type] = file_name
            (target / file_name).write_text(json.dumps({"root": root, "nodes": nodes}))
    (target / "index.json").write_text(json.dumps(index))


@dataclass
class Schema:
    """One provider package's schema, read from the cache type by type."""

    package: Package
    directory: Path
    index: dict[str, dict[str, str]]
    _loaded: dict[tuple[str, str], tuple[str, dict[str, Node]]] = field(default_factory=dict)

    def has(self, kind: str, terraform_type: str) -> bool:
        return terraform_type in self.index[kind]

    def root(self, kind: str, terraform_type: str) -> tuple[str, dict[str, Node]]:
        key = (kind, terraform_type)
        if key not in self._loaded:
            loaded = json.loads((self.directory / self.index[kind][terraform_type]).read_text())
            self._loaded[key] = (loaded["root"], loaded["nodes"])
        return self._loaded[key]


@cache
def load(package: Package) -> Schema:
    """The package's schema, extracted into the cache on first use."""
    directory = CACHE / f"{package.dist}-{package.version}-v{FORMAT}"
    if not (directory / "index.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # One extractor at a time: concurrent test runs share the cache.
        with (CACHE / f"{package.dist}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (directory / "index.json").exists():
                partial = directory.with_name(directory.name + f".tmp{os.getpid()}")
                _extract(package, partial)
                partial.rename(directory)
    index = json.loads((directory / "index.json").read_text())
    return Schema(package, directory, index)


# --- checking infra/ --------------------------------------------------------------------------

_META = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}
_META_BLOCKS = {"lifecycle", "provisioner", "connection"}
_REFERENCE = re.compile(
    r"(?<![\w.\-/\"])(data\.)?([a-z][a-z0-9]*_[a-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_-]*)"
    r"((?:\[[^\]\[]*\]|\.[A-Za-z_][A-Za-z0-9_-]*|\.\*)*)"
)
_STEP = re.compile(r"\[[^\]\[]*\]|\.(\*|[A-Za-z_][A-Za-z0-9_-]*)")


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _is_block(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and item.get("__is_block__") for item in value)
    )


def _is_labelled_block(value: object) -> bool:
    # `provisioner "local-exec" { ... }`: python-hcl2 nests the block under its label.
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(item, dict) and all(_is_block([inner]) for _, inner in _fields(item))
            for item in value
        )
    )


def _literal(value: object) -> str | None:
    """The string a quoted literal without interpolation stands for, else None."""
    if not isinstance(value, str) or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return None
    text = value[1:-1]
    return None if "${" in text or text.startswith("<<") else text


def _fields(body: Mapping[str, object]) -> Iterator[tuple[str, object]]:
    for key, value in body.items():
        if not (key.startswith("__") and key.endswith("__")):
            yield _unquote(key), value


@dataclass(frozen=True)
class Block:
    """A resource or data block of infra/."""

    file: str
    kind: str  # "resource" or "data"
    type: str
    name: str
    body: dict[str, object]

    @property
    def address(self) -> str:
        prefix = "data." if self.kind == "data" else ""
        return f"{prefix}{self.type}.{self.name}"

    @property
    def provider(self) -> str:
        """The provider's local name: the `provider` meta-argument, else the type's prefix."""
        chosen = self.body.get("provider")
        if isinstance(chosen, str):
            return _unquote(chosen).removeprefix("${").removesuffix("}").split(".")[0]
        return self.type.split("_")[0]


def _root(block: Block, schemas: tuple[Schema, ...]) -> tuple[str, dict[str, Node]] | None:
    """The block's schema, from the provider that serves it (google-beta only when asked)."""
    if block.kind == "resource" and block.type in BUILTIN:
        return BUILTIN[block.type]
    for schema in schemas:
        if schema.package.name == block.provider and schema.has(block.kind, block.type):
            return schema.root(block.kind, block.type)
    return None


def parse(infra: Path) -> tuple[list[Block], list[tuple[str, object]]]:
    """Every resource and data block, and every top-level value (for references), of infra/."""
    blocks: list[Block] = []
    everything: list[tuple[str, object]] = []
    for path in sorted(infra.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            parsed = hcl2.load(handle)
        everything.append((path.name, parsed))
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for terraform_type, named in _fields(entry):
                    assert isinstance(named, dict)
                    for name, body in _fields(named):
                        assert isinstance(body, dict)
                        blocks.append(Block(path.name, kind, terraform_type, name, body))
    return blocks, everything


def _check_body(
    where: str,
    body: Mapping[str, object],
    node_name: str,
    nodes: Mapping[str, Node],
    problems: list[str],
    *,
    top: bool,
) -> None:
    node = nodes.get(node_name, {"args": {}, "blocks": {}, "attrs": {}})
    present: set[str] = set()
    for name, value in _fields(body):
        if top and name in _META:
            if name in _META_BLOCKS and not (_is_block(value) or _is_labelled_block(value)):
                problems.append(f"{where}: {name} must be a block")
            continue
        if name == "dynamic":
            for entry in value if isinstance(value, list) else []:
                for label, dynamic in _fields(entry):
                    present.add(label)
                    _check_dynamic(where, label, dynamic, node, nodes, problems)
            continue
        present.add(name)
        if name in node["args"]:
            if _is_block(value):
                problems.append(f"{where}: {name} is an argument, written as a block")
                continue
            enum = node["args"][name].get("enum")
            literal = _literal(value)
            if enum and literal is not None and literal not in enum:
                problems.append(f"{where}: {name} = {literal!r} is not one of {enum}")
        elif name in node["blocks"]:
            spec = node["blocks"][name]
            if not _is_block(value):
                problems.append(f"{where}: {name} is a block, written as an argument")
                continue
            assert isinstance(value, list)
            if spec["single"] and len(value) > 1:
                problems.append(f"{where}: {name} may appear once, found {len(value)}")
            for item in value:
                _check_body(f"{where}.{name}", item, spec["node"], nodes, problems, top=False)
        elif name in node["attrs"]:
            problems.append(f"{where}: {name} is read-only (computed), it cannot be set")
        else:
            what = "block" if _is_block(value) else "argument"
            problems.append(f"{where}: unsupported {what} {name}")
    for name, spec in node["args"].items():
        if spec["required"] and name not in present:
            problems.append(f"{where}: required argument {name} is missing")
    for name, spec in node["blocks"].items():
        if spec["required"] and name not in present:
            problems.append(f"{where}: required block {name} is missing")


def _check_dynamic(
    where: str,
    label: str,
    dynamic: object,
    node: Node,
    nodes: Mapping[str, Node],
    problems: list[str],
) -> None:
    if label not in node["blocks"]:
        problems.append(f"{where}: dynamic {label!r} names no block of this resource")
        return
    assert isinstance(dynamic, dict)
    for name, value in _fields(dynamic):
        if name == "content":
            for item in value if isinstance(value, list) else []:
                spec = node["blocks"][label]
                _check_body(f"{where}.{label}", item, spec["node"], nodes, problems, top=False)
        elif name not in {"for_each", "iterator", "labels"}:
            problems.append(f"{where}: dynamic {label!r} has no argument {name}")


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _check_path(
    reference: str, terraform_type: str, path: list[str], root: str, nodes: Mapping[str, Node]
) -> str | None:
    """Why `path` (attribute names after `type.name`) does not exist, or None."""
    node_name = root
    for depth, step in enumerate(path):
        node = nodes.get(node_name)
        if node is None:
            return None
        if step not in node["attrs"]:
            inside = f" in {'.'.join(path[:depth])}" if depth else ""
            return f"{reference}: {terraform_type} has no attribute {step!r}{inside}"
        node_name = node["attrs"][step]
        if not node_name:
            # A scalar, or a map or list of scalars: what follows is a key or an index.
            return None
    return None


def _check_references(
    everything: list[tuple[str, object]],
    declared: Mapping[str, Block],
    schemas: tuple[Schema, ...],
    problems: list[str],
) -> None:
    # References are told apart from for-expression variables by their provider prefix.
    prefixes = tuple(
        {name.split("_")[0] + "_" for schema in schemas for name in schema.index["resource"]}
        | {"terraform_"}
    )
    seen: set[tuple[str, str]] = set()
    for file_name, parsed in everything:
        # A moved block names addresses that no longer exist (checked by _check_moved).
        assert isinstance(parsed, dict)
        current = {key: value for key, value in parsed.items() if key != "moved"}
        for text in _strings(current):
            for match in _REFERENCE.finditer(text):
                data, terraform_type, name, rest = match.groups()
                reference = match.group(0)
                if not terraform_type.startswith(prefixes) or (file_name, reference) in seen:
                    continue
                seen.add((file_name, reference))
                address = f"{'data.' if data else ''}{terraform_type}.{name}"
                if address not in declared:
                    problems.append(f"{file_name}: {reference} refers to undeclared {address}")
                    continue
                found = _root(declared[address], schemas)
                if found is None:
                    continue  # reported with the block itself
                path = [step for step in _STEP.findall(rest) if step and step != "*"]
                root, nodes = found
                problem = _check_path(reference, terraform_type, path, root, nodes)
                if problem:
                    problems.append(f"{file_name}: {problem}")


def _check_moved(
    everything: list[tuple[str, object]], declared: Mapping[str, Block], problems: list[str]
) -> None:
    for file_name, parsed in everything:
        assert isinstance(parsed, dict)
        for entry in parsed.get("moved", []):
            ends = {key: _address(str(value)) for key, value in _fields(entry)}
            if ends.get("from") in declared:
                problems.append(f"{file_name}: moved from {ends['from']}, which is still declared")
            if ends.get("to") not in declared:
                problems.append(f"{file_name}: moved to {ends.get('to')}, which is not declared")


def _address(expression: str) -> str:
    """`type.name` of a `${type.name[key]}` address."""
    text = expression.removeprefix("${").removesuffix("}")
    return ".".join(text.split("[", 1)[0].split(".")[:2])


# --- environment variables known while planning -----------------------------------------------

_LOCAL = re.compile(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)")


def _environment_values(body: Mapping[str, object]) -> Iterator[object]:
    """Every `environment_variables` value in a block, nested blocks included."""
    for name, value in _fields(body):
        if name == "environment_variables":
            yield value
        elif _is_block(value):
            assert isinstance(value, list)
            for item in value:
                yield from _environment_values(item)


@dataclass
class _Plan:
    """What is known while planning a first apply: variables, data sources read from them, and
    arguments set in configuration from known values; never a computed attribute or an id."""

    local_values: dict[str, object]
    declared: Mapping[str, Block]
    seen: set[str] = field(default_factory=set)

    def unknown(self, value: object) -> set[str]:
        """References in `value` (through locals) known only after apply."""
        found: set[str] = set()
        for text in _strings(value):
            for name in _LOCAL.findall(text):
                if f"local.{name}" not in self.seen:
                    self.seen.add(f"local.{name}")
                    found |= self.unknown(self.local_values.get(name))
            for match in _REFERENCE.finditer(text):
                data, terraform_type, name, rest = match.groups()
                block = self.declared.get(f"{'data.' if data else ''}{terraform_type}.{name}")
                path = [step for step in _STEP.findall(rest) if step and step != "*"]
                if block is not None and not self._known(block, path):
                    found.add(match.group(0))
        return found

    def _known(self, block: Block, path: list[str]) -> bool:
        if block.kind == "data":
            # Read while planning, unless an argument is itself unknown.
            return not self.unknown(
                {key: value for key, value in block.body.items() if key != "depends_on"}
            )
        body: Mapping[str, object] = block.body
        for step in path:
            value = dict(_fields(body)).get(step)
            if value is None or step == "id":
                return False  # computed by the provider, or not set here
            if _is_block(value):
                assert isinstance(value, list)
                body = value[0]
                continue
            return not self.unknown(value)
        return False  # a whole resource or block carries computed attributes


def _check_environment(
    blocks: list[Block], everything: list[tuple[str, object]], declared: Mapping[str, Block]
) -> list[str]:
    """A function whose environment_variables reference a value known only after apply has
    its whole environment marked computed, and a first apply stops with "Provider produced
    inconsistent final plan" (hashicorp/terraform-provider-google#18747, #22497)."""
    local_values: dict[str, object] = {}
    for _, parsed in everything:
        assert isinstance(parsed, dict)
        for entry in parsed.get("locals", []):
            local_values.update(_fields(entry))
    problems = []
    for block in blocks:
        count = block.body.get("count")
        if count is not None:
            # Terraform refuses a count it cannot know while planning.
            for reference in sorted(_Plan(local_values, declared).unknown(count)):
                problems.append(
                    f"{block.file}: {block.address}: count uses {reference}, known only after apply"
                )
        for value in _environment_values(block.body):
            for reference in sorted(_Plan(local_values, declared).unknown(value)):
                problems.append(
                    f"{block.file}: {block.address}: environment_variables uses {reference},"
                    " known only after apply"
                )
    return problems


def check(infra: Path, schemas: tuple[Schema, ...]) -> list[str]:
    """Every problem found in infra/*.tf, as `file: address: what` lines."""
    blocks, everything = parse(infra)
    problems: list[str] = []
    for block in blocks:
        found = _root(block, schemas)
        where = f"{block.file}: {block.address}"
        if found is None:
            providers = ", ".join(
                schema.package.provider
                for schema in schemas
                if schema.package.name == block.provider
            )
            problems.append(
                f"{where}: no {block.kind} type {block.type} in {providers or block.provider}"
            )
            continue
        root, nodes = found
        _check_body(where, block.body, root, nodes, problems, top=True)
    declared = {block.address: block for block in blocks}
    _check_references(everything, declared, schemas, problems)
    _check_moved(everything, declared, problems)
    problems.extend(_check_environment(blocks, everything, declared))
    return problems


def _providers(schemas: tuple[Schema, ...]) -> str:
    return ", ".join(schema.package.provider for schema in schemas)


# --- plan-time evaluation --------------------------------------------------------------------
#
# `terraform console` needs no provider when the configuration declares none, and evaluates every
# local of it. infra/ is rewritten into such a model: variables and locals verbatim, each
# resource and data source a local holding its arguments (count and for_each expanded, dynamic
# blocks too) merged with placeholders for what the provider computes, outputs and lifecycle
# preconditions as locals. An expression that would fail a plan fails the model: a null in a
# string template, an invalid index, a failed precondition or variable validation.

UNKNOWN = '"(known after apply)"'
_BLOCK_TEXT = re.compile(r"^(variable|locals) [^\n]*\{\n.*?^\}\n", re.M | re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SKIP = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}


def _hcl(value: object) -> str:
    """The HCL expression python-hcl2 parsed into `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if value.startswith('"<<'):
            lines = value[1:-1].split("\n")[1:-1]  # drop `<<-EOT` and `EOT`
            indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
            text = "\n".join(line[indent:] for line in lines) + "\n"
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if value.startswith("${") and value.endswith("}"):
            return value[2:-1]
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_hcl(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = [f'"{_unquote(str(k))}" = {_hcl(v)}' for k, v in _fields(value)]
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(f"cannot render {value!r}")


def _placeholder(node_name: str, nodes: Mapping[str, Node], depth: int = 0) -> str:
    node = nodes.get(node_name)
    if node is None or depth > 2:
        return "[]"
    pairs = [
        f"{name} = {_placeholder(child, nodes, depth + 1) if child else UNKNOWN}"
        for name, child in node["attrs"].items()
    ]
    return "[{" + ", ".join(pairs) + "}]"


def _object(body: Mapping[str, object], node_name: str, nodes: Mapping[str, Node]) -> str:
    node = nodes.get(node_name, {"args": {}, "blocks": {}, "attrs": {}})
    parts: dict[str, str] = {}
    for name, value in _fields(body):
        if name in _SKIP:
            continue
        if name == "dynamic":
            for entry in value if isinstance(value, list) else []:
                for label, dynamic in _fields(entry):
                    assert isinstance(dynamic, dict)
                    spec = dict(_fields(dynamic))
                    iterator = _unquote(str(spec.get("iterator", label)))
                    child = node["blocks"].get(label, {}).get("node", "")
                    content = _list(spec.get("content"))
                    rendered = _object(content[0], child, nodes) if content else "{}"
                    expanded = (
                        f"[for {iterator} in [for k, v in {_hcl(spec.get('for_each'))} :"
                        f" {{key = k, value = v}}] : {rendered}]"
                    )
                    parts[label] = f"concat({parts.get(label, '[]')}, {expanded})"
            continue
        if _is_block(value):
            assert isinstance(value, list)
            child = node["blocks"].get(name, {}).get("node", "")
            parts[name] = "[" + ", ".join(_object(item, child, nodes) for item in value) + "]"
        else:
            parts[name] = _hcl(value)
    for name, child in node["attrs"].items():
        if name not in parts:
            parts[name] = _placeholder(child, nodes) if child else UNKNOWN
    return "{" + ", ".join(f"{name} = {text}" for name, text in parts.items()) + "}"


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _instances(block: Block, rendered: str, *, listed: bool = False) -> str:
    """`rendered` once, per count index, or per for_each key, as Terraform would expand it
    (`listed`: always as a list)."""
    body = dict(_fields(block.body))
    if "count" in body:
        return (
            f"[for count in [for i in range({_hcl(body['count'])}) : {{index = i}}] : {rendered}]"
        )
    if "for_each" in body:
        each = f"for each in [for k, v in {_hcl(body['for_each'])} : {{key = k, value = v}}]"
        return f"[{each} : {rendered}]" if listed else f"{{{each} : each.key => {rendered}}}"
    return f"[{rendered}]" if listed else rendered


def _local_name(address: str) -> str:
    return "r__" + address.replace(".", "__")


def model(infra: Path, schemas: tuple[Schema, ...], target: Path) -> None:
    """Write infra/ as a provider-free module into `target` (see above)."""
    blocks, everything = parse(infra)
    addresses = sorted((block.address for block in blocks), key=len, reverse=True)
    pattern = re.compile(
        r"(?<![\w.\-/\"])(" + "|".join(re.escape(a) for a in addresses) + r")(?![\w-])"
    )

    def rewrite(text: str) -> str:
        return pattern.sub(lambda match: "local." + _local_name(match.group(1)), text)

    for path in sorted(infra.glob("*.tf")):
        text = "".join(m.group(0) for m in _BLOCK_TEXT.finditer(path.read_text("utf-8")))
        (target / path.name).write_text(rewrite(text), encoding="utf-8")
    for template in infra.glob("*.tftpl"):
        (target / template.name).write_text(template.read_text("utf-8"), encoding="utf-8")
    checks: list[str] = []
    for block in blocks:
        found = _root(block, schemas)
        root, nodes = found if found is not None else ("", {})
        rendered = _instances(block, _object(block.body, root, nodes))
        lines = [f"  {_local_name(block.address)} = {rendered}"]
        for lifecycle in _list(block.body.get("lifecycle")):
            for index, condition in enumerate(_list(dict(_fields(lifecycle)).get("precondition"))):
                spec = dict(_fields(condition))
                check = (
                    f"{{ok = {_hcl(spec['condition'])}, message = {_hcl(spec['error_message'])}}}"
                )
                name = f"{_local_name(block.address)}__pre{index}"
                lines.append(f"  {name} = {_instances(block, check, listed=True)}")
                checks.append(f"{block.address}: local.{name}")
        file_name = f"model__{_local_name(block.address)}.tf"
        (target / file_name).write_text(rewrite("locals {\n" + "\n".join(lines) + "\n}\n"))
    outputs = [
        f"  output__{_unquote(name)} = {_hcl(dict(_fields(body)).get('value'))}"
        for _, parsed in everything
        if isinstance(parsed, dict)
        for entry in parsed.get("output", [])
        for name, body in _fields(entry)
        if isinstance(body, dict)
    ]
    (target / "model__outputs.tf").write_text(rewrite("locals {\n" + "\n".join(outputs) + "\n}\n"))
    (target / "model__checks.json").write_text(json.dumps(checks))


def evaluate(infra: Path, schemas: tuple[Schema, ...], values: Mapping[str, str]) -> list[str]:
    """What would fail a plan of infra/ with these variables (HCL expressions by name)."""
    with tempfile.TemporaryDirectory(prefix="tfmodel-") as directory:
        target = Path(directory)
        model(infra, schemas, target)
        (target / "values.tfvars").write_text(
            "".join(f"{name} = {value}\n" for name, value in values.items())
        )
        checks: list[str] = json.loads((target / "model__checks.json").read_text())
        # Each precondition, per instance: the messages of those that fail.
        query = (
            "flatten(["
            + ", ".join(
                f"[for check in {item.split(': ')[1]} : check.message if !check.ok]"
                for item in checks
            )
            + "])"
        )
        result = subprocess.run(
            ["terraform", "console", "-var-file=values.tfvars"],
            cwd=target,
            input=f"jsonencode({query})\n",
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            env={**os.environ, "TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull},
        )
    output = _ANSI.sub("", result.stdout + result.stderr)
    problems = [
        " ".join(error.split("╵")[0].replace("│", " ").split())
        for error in output.split("Error: ")[1:]
    ]
    if not problems:
        last = [line for line in output.splitlines() if line.startswith('"')]
        assert last, f"terraform console answered nothing useful:\n{output}"
        problems = [
            f"precondition failed: {message}" for message in json.loads(json.loads(last[-1]))
        ]
    return problems


def main(argv: list[str]) -> int:
    infra = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "infra"
    failed = False
    for label, packages in PROVIDER_SETS.items():
        started = time.perf_counter()
        problems = check(infra, tuple(load(package) for package in packages))
        elapsed = time.perf_counter() - started
        print(f"{label}: {len(problems)} problem(s), {elapsed:.2f} s")
        for problem in problems:
            print(f"  {problem}")
        failed = failed or bool(problems)
    started = time.perf_counter()
    schemas = tuple(load(package) for package in PROVIDER_SETS["google 7.x"])
    problems = evaluate(infra, schemas, {"project_id": '"my-project"', "region": '"us-central1"'})
    print(
        f"plan-time evaluation: {len(problems)} problem(s), {time.perf_counter() - started:.2f} s"
    )
    for problem in problems:
        print(f"  {problem}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
