"""infra/*.tf checked against the providers' own schemas, without downloading the providers.

The prebuilt CDKTF/CDKTN provider packages on PyPI are generated from each provider's schema:
inside each wheel, `package/.jsii` holds one interface per resource and nested block (optional or
required, documented enum values) and `package/lib/<resource>/index.js` the snake_case names,
block or attribute, and every readable (computed) attribute. Wheels are pinned by version and
sha256; the schema extracted from each is cached as JSON, one file per resource type, so a rerun
reads only the types infra/ uses.

    python -m tests.support.tfschema [infra-dir]     check against google 6.x and 7.x
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
# The provider sets infra/ is checked against: its version constraint allows both majors.
PROVIDER_SETS = {"google 6.x": (GOOGLE_6, ARCHIVE, TIME), "google 7.x": (GOOGLE_7, ARCHIVE, TIME)}

Node = dict[str, Any]

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
            if name in _META_BLOCKS and not _is_block(value):
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
    declared: set[str],
    schemas: tuple[Schema, ...],
    problems: list[str],
) -> None:
    # References are told apart from for-expression variables by their provider prefix.
    prefixes = tuple(
        {name.split("_")[0] + "_" for schema in schemas for name in schema.index["resource"]}
    )
    seen: set[tuple[str, str]] = set()
    for file_name, parsed in everything:
        for text in _strings(parsed):
            for match in _REFERENCE.finditer(text):
                data, terraform_type, name, rest = match.groups()
                reference = match.group(0)
                if not terraform_type.startswith(prefixes) or (file_name, reference) in seen:
                    continue
                seen.add((file_name, reference))
                kind = "data" if data else "resource"
                address = f"{'data.' if data else ''}{terraform_type}.{name}"
                if address not in declared:
                    problems.append(f"{file_name}: {reference} refers to undeclared {address}")
                    continue
                schema = next((s for s in schemas if s.has(kind, terraform_type)), None)
                if schema is None:
                    continue  # reported with the block itself
                path = [step for step in _STEP.findall(rest) if step and step != "*"]
                root, nodes = schema.root(kind, terraform_type)
                problem = _check_path(reference, terraform_type, path, root, nodes)
                if problem:
                    problems.append(f"{file_name}: {problem}")


def check(infra: Path, schemas: tuple[Schema, ...]) -> list[str]:
    """Every problem found in infra/*.tf, as `file: address: what` lines."""
    blocks, everything = parse(infra)
    problems: list[str] = []
    for block in blocks:
        schema = next((s for s in schemas if s.has(block.kind, block.type)), None)
        where = f"{block.file}: {block.address}"
        if schema is None:
            problems.append(f"{where}: no {block.kind} type {block.type} in {_providers(schemas)}")
            continue
        root, nodes = schema.root(block.kind, block.type)
        _check_body(where, block.body, root, nodes, problems, top=True)
    declared = {block.address for block in blocks}
    _check_references(everything, declared, schemas, problems)
    return problems


def _providers(schemas: tuple[Schema, ...]) -> str:
    return ", ".join(schema.package.provider for schema in schemas)


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
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
