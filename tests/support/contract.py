"""The contract between the Python and the Ansible halves: every shared fact has one definition.

sollol_ops/cluster/facts.py defines the inventory group names, the default rpc port, the llama.cpp install prefix,
the RPC binary names, the pinned llama.cpp ref and every cluster variable with its default. `check(root)` reads a
sollol-ops tree (a checkout, or a copy of one) and returns one line per place that says otherwise: the roles'
defaults, vars and argument_specs, the `| default(...)` fallbacks in roles and playbooks, the playbooks' `hosts:`
lines and `groups[...]` lookups, the inventory the coordinator role writes for the CLI, inventory.example.ini,
the Makefile, the Molecule scenarios, galaxy.yml, and literals in the Python package that should name cluster_vars.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import yaml

_JINJA = re.compile(r"\{\{.*?\}\}", re.S)
_HOST_PATTERN_OK = {"", "all", "localhost"}


def load_cluster_vars(root: Path) -> ModuleType:
    """root/sollol_ops/cluster/facts.py on its own (it imports nothing of the package), not the imported copy."""
    path = root / "sollol_ops" / "cluster" / "facts.py"
    spec = importlib.util.spec_from_file_location(f"_contract_cluster_vars_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(path: Path) -> Any:
    return _load(path.read_text()) if path.is_file() else None


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)  # CSafeLoader or SafeLoader


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _jinja_literal(text: str) -> tuple[bool, Any]:
    """A Jinja literal ('x', 0, [], true) as Python, or (False, None) for an expression."""
    text = text.strip()
    mapped = {"true": "True", "false": "False", "none": "None"}.get(text.lower(), text)
    try:
        return True, ast.literal_eval(mapped)
    except (ValueError, SyntaxError):
        return False, None


def _default_args(text: str, name: str) -> list[str]:
    """The arguments of every `NAME | default(ARG)` in text (balanced parentheses)."""
    found = []
    for m in re.finditer(rf"(?<![\w]){re.escape(name)}\s*\|\s*default\(", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        found.append(text[m.end() : i - 1])
    return found


def _ansible_files(root: Path) -> list[Path]:
    files = [p for p in (root / "roles").rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml", ".j2")]
    files += sorted((root / "playbooks").glob("*.yml"))
    files += [root / "site.yml"] if (root / "site.yml").is_file() else []
    return sorted(files)


def check(root: Path) -> list[str]:
    """Every disagreement with sollol_ops/cluster/facts.py under root, one line each (empty: the contract holds)."""
    root = root.resolve()
    cv = load_cluster_vars(root)
    expected: dict[str, Any] = {**cv.DEFAULTS, **cv.ROLE_DEFAULTS}
    groups = {cv.RPC_GROUP: "sollol_rpc_group", cv.COORDINATOR_GROUP: "sollol_coordinator_group"}
    problems: list[str] = []

    # roles/sollol_cluster/defaults: exactly cluster_vars.DEFAULTS.
    cluster_file = root / "roles/sollol_cluster/defaults/main.yml"
    cluster = _yaml(cluster_file) or {}
    for key in sorted(set(cluster) | set(cv.DEFAULTS)):
        if key not in cluster:
            problems.append(f"{_rel(root, cluster_file)}: {key} missing (cluster_vars: {cv.DEFAULTS[key]!r})")
        elif key not in cv.DEFAULTS:
            problems.append(f"{_rel(root, cluster_file)}: {key} is not in cluster_vars.DEFAULTS")
        elif cluster[key] != cv.DEFAULTS[key]:
            problems.append(
                f"{_rel(root, cluster_file)}: {key} is {cluster[key]!r}, cluster_vars says {cv.DEFAULTS[key]!r}"
            )

    # Every role: defaults and argument_specs agree with cluster_vars and with each other.
    for role in sorted(p for p in (root / "roles").iterdir() if p.is_dir()):
        defaults_file = role / "defaults/main.yml"
        defaults = _yaml(defaults_file) or {}
        for key, value in defaults.items():
            if key in expected and value != expected[key]:
                problems.append(f"{_rel(root, defaults_file)}: {key} is {value!r}, cluster_vars says {expected[key]!r}")
        specs_file = role / "meta/argument_specs.yml"
        specs = (_yaml(specs_file) or {}).get("argument_specs", {})
        for entry in specs.values():
            for key, option in (entry.get("options") or {}).items():
                where = f"{_rel(root, specs_file)}: option {key}"
                if key in expected:
                    if _templated(expected[key]):
                        if "default" in option:
                            problems.append(f"{where} has default {option['default']!r}; the real one is a template")
                    elif option.get("default") != expected[key]:
                        got = option.get("default")
                        problems.append(f"{where} default is {got!r}, cluster_vars says {expected[key]!r}")
                role_default = defaults.get(key, option.get("default"))
                if "default" in option and option["default"] != role_default and not _templated(role_default):
                    problems.append(f"{where} default {option['default']!r} != defaults/main.yml {role_default!r}")
                if key == "rpc_server_binary" and option.get("choices") != list(cv.RPC_SERVER_NAMES):
                    problems.append(f"{where} choices {option.get('choices')!r} != {list(cv.RPC_SERVER_NAMES)!r}")

    # The RPC binary names in roles/llama_cpp.
    llama_vars_file = root / "roles/llama_cpp/vars/main.yml"
    names = (_yaml(llama_vars_file) or {}).get("llama_cpp__rpc_names")
    if names != list(cv.RPC_SERVER_NAMES):
        problems.append(f"{_rel(root, llama_vars_file)}: llama_cpp__rpc_names {names!r} != {cv.RPC_SERVER_NAMES!r}")
    llama_defaults_file = root / "roles/llama_cpp/defaults/main.yml"
    targets = (_yaml(llama_defaults_file) or {}).get("llama_cpp_targets") or []
    if cv.RPC_SERVER_NAMES[0] not in targets:
        problems.append(f"{_rel(root, llama_defaults_file)}: llama_cpp_targets lacks {cv.RPC_SERVER_NAMES[0]}")

    # Roles and playbooks: `VAR | default(LITERAL)` fallbacks, `hosts:` patterns, `groups['literal']`.
    for path in _ansible_files(root):
        text = path.read_text()
        for key, value in expected.items():
            for arg in _default_args(text, key):
                literal, parsed = _jinja_literal(arg)
                if literal and parsed != value:
                    problems.append(f"{_rel(root, path)}: {key} | default({arg.strip()}), cluster_vars says {value!r}")
        for m in re.finditer(r"groups\[\s*['\"]([^'\"]+)['\"]\s*\]", text):
            if m.group(1) in groups:
                name = m.group(1)
                problems.append(f"{_rel(root, path)}: groups['{name}'] hard-codes a group: use groups[{groups[name]}]")
        if path.parent.name == "playbooks" or path == root / "site.yml":
            for play in _load(text) or []:
                hosts = play.get("hosts") if isinstance(play, dict) else None
                if not isinstance(hosts, str):
                    continue
                literal_part = _JINJA.sub("", hosts)
                for token in re.split(r"[:,&!\s]+", literal_part):
                    if token not in _HOST_PATTERN_OK:
                        problems.append(
                            f"{_rel(root, path)}: play {play.get('name')!r} has hosts {hosts!r}: name groups through "
                            "{{ sollol_rpc_group | default(...) }} / {{ sollol_coordinator_group | default(...) }}"
                        )

    problems += _check_rpc_threads(root, cv)
    problems += _check_cli_inventory_template(root, cv)
    problems += _check_gateway_unit(root, cv)
    problems += _check_files_outside_roles(root, cv)
    problems += _check_python(root, cv)
    return problems


def template_env() -> jinja2.Environment:
    """Jinja as Ansible renders the roles' templates, with the filters they use."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).strip().lower() in ("true", "yes", "on", "1")
    return env


def _check_cli_inventory_template(root: Path, cv: ModuleType) -> list[str]:
    """The inventory roles/coordinator writes for the CLI: the CLI's default groups, cluster_vars' defaults."""
    path = root / "roles/coordinator/templates/inventory.yml.j2"
    env = template_env()
    variables = {
        "ansible_managed": "managed",
        "inventory_hostname": "coord1",
        "groups": {cv.RPC_GROUP: ["worker1"], cv.POOL_GROUP: ["node1"]},
        "hostvars": {"worker1": {}, "node1": {}},
        **cv.DEFAULTS,
    }
    try:
        data = _load(env.from_string(path.read_text()).render(**variables))
        children = data["all"]["children"]
        worker = children[cv.RPC_GROUP]["hosts"]["worker1"]
        coordinator = (children.get(cv.COORDINATOR_GROUP) or {}).get("hosts", {}).get("coord1")
        node = ((children.get(cv.POOL_GROUP) or {}).get("hosts") or {}).get("node1") or {}
        part = _load(env.from_string(path.read_text()).render(**variables, coordinator__without_gateway=True))
    except (jinja2.TemplateError, yaml.YAMLError, KeyError, TypeError, AttributeError, OSError) as exc:
        return [f"{_rel(root, path)}: no {cv.RPC_GROUP} host in the rendered inventory ({type(exc).__name__}: {exc})"]
    problems = []
    cli_groups = sorted([cv.RPC_GROUP, cv.COORDINATOR_GROUP, cv.POOL_GROUP])
    if sorted(children) != cli_groups:
        problems.append(f"{_rel(root, path)}: writes groups {sorted(children)}, the CLI reads {cli_groups}")
    # the gateway's routing picture: every pool node with its variables, the gateway-wide variables
    for key, value in cv.POOL_DEFAULTS.items():
        if node.get(key) != value:
            problems.append(
                f"{_rel(root, path)}: a pool node's unset {key} is written as {node.get(key)!r}, not {value!r}"
            )
    for key, value in cv.GATEWAY_DEFAULTS.items():
        got = (data["all"].get("vars") or {}).get(key, "missing")
        if got != value:
            problems.append(f"{_rel(root, path)}: all.vars.{key} is written as {got!r}, not {value!r}")
    # the coordinator's part (a change of which restarts its unit) leaves out exactly the gateway's
    gateway_keys = {*cv.GATEWAY_DEFAULTS} & set((part.get("all") or {}).get("vars") or {})
    if cv.POOL_GROUP in ((part.get("all") or {}).get("children") or {}) or gateway_keys:
        problems.append(
            f"{_rel(root, path)}: the coordinator's part (coordinator__without_gateway) holds the gateway's"
        )
    wide: dict[str, Any] = getattr(cv, "CLUSTER_WIDE", {})
    skip = {*cv.GROUP_VARS, *wide, *cv.COORDINATOR_VARS, "sollol_rpc_address"}
    want = {k: v for k, v in cv.DEFAULTS.items() if k not in skip}
    for key, value in want.items():
        if worker.get(key) != value:
            problems.append(f"{_rel(root, path)}: an unset {key} is written as {worker.get(key)!r}, not {value!r}")
    written = data["all"].get("vars") or {}
    for key, value in wide.items():  # cluster-wide: written once, for all hosts
        if written.get(key) != value:
            problems.append(f"{_rel(root, path)}: all.vars.{key} is written as {written.get(key)!r}, not {value!r}")
    # the coordinator's own variables, on the coordinator host (what `up` there reads)
    for key, value in cv.COORDINATOR_VARS.items():
        got = (coordinator or {}).get(key)
        if got != value:
            problems.append(f"{_rel(root, path)}: the coordinator's {key} is written as {got!r}, not {value!r}")
    return problems


def _check_gateway_unit(root: Path, cv: ModuleType) -> list[str]:
    """sollol-gateway.service passes the API key in the variable the gateway reads, and the role's defaults for the
    gateway are the CLI's (coordinator_gateway_* are in ROLE_DEFAULTS, checked above)."""
    path = root / "roles/coordinator/vars/main.yml"
    env = (_yaml(path) or {}).get("coordinator__gateway_key_env")
    if env != cv.GATEWAY_API_KEY_ENV:
        want = cv.GATEWAY_API_KEY_ENV
        return [f"{_rel(root, path)}: coordinator__gateway_key_env is {env!r}, cluster_vars says {want!r}"]
    return []


def _check_files_outside_roles(root: Path, cv: ModuleType) -> list[str]:
    problems = []
    makefile = root / "Makefile"
    m = re.search(r"^LLAMA_REF\s*:?=\s*(\S+)", makefile.read_text(), re.M) if makefile.is_file() else None
    if m is None or m.group(1) != cv.LLAMA_REF:
        problems.append(f"Makefile: LLAMA_REF is {m.group(1) if m else None!r}, cluster_vars says {cv.LLAMA_REF!r}")

    platform_groups: set[str] = set()
    for scenario in sorted((root / "molecule").glob("*/molecule.yml")):
        data = _yaml(scenario) or {}
        group_vars = ((data.get("provisioner") or {}).get("inventory") or {}).get("group_vars") or {}
        for group, variables in group_vars.items():
            for key, value in (variables or {}).items():
                want = cv.ROLE_DEFAULTS.get(key)
                if key in ("llama_cpp_version", "llama_cpp_prefix") and value != want:
                    problems.append(f"{_rel(root, scenario)}: {group}: {key} is {value!r}, cluster_vars says {want!r}")
        groups_here = {g for p in data.get("platforms") or [] for g in p.get("groups") or []}
        if cv.RPC_GROUP not in groups_here:
            problems.append(f"{_rel(root, scenario)}: no platform in group {cv.RPC_GROUP} ({sorted(groups_here)})")
        for group in group_vars:
            if group != "all" and group not in groups_here:
                problems.append(f"{_rel(root, scenario)}: group_vars for {group}, but no platform in that group")
        platform_groups |= groups_here
    if (root / "molecule").is_dir() and cv.COORDINATOR_GROUP not in platform_groups:
        problems.append(f"molecule: no scenario has a platform in group {cv.COORDINATOR_GROUP}")

    example = root / "inventory.example.ini"
    text = example.read_text() if example.is_file() else ""
    sections = set(re.findall(r"^\[([^\]:]+)\]", text, re.M))
    for group in (cv.RPC_GROUP, cv.COORDINATOR_GROUP):
        if group not in sections:
            problems.append(f"inventory.example.ini: no [{group}] section (sections: {sorted(sections)})")
    for ref in re.findall(r"^\s*llama_cpp_version\s*=\s*(\S+)", text, re.M):
        if ref != cv.LLAMA_REF:
            problems.append(f"inventory.example.ini: llama_cpp_version={ref}, cluster_vars says {cv.LLAMA_REF!r}")

    galaxy = root / "collection/galaxy.yml"
    if galaxy.is_file():
        version = re.search(r'^__version__\s*=\s*"([^"]+)"', (root / "sollol_ops/__init__.py").read_text(), re.M)
        declared = (_yaml(galaxy) or {}).get("version")
        if version is None or declared != version.group(1):
            problems.append(f"collection/galaxy.yml: version {declared!r} != sollol_ops.__version__")
    return problems


def _check_rpc_threads(root: Path, cv: ModuleType) -> list[str]:
    """The rpc_server role's automatic thread count (its Jinja) against cluster_vars.rpc_threads, on a
    spread of core and instance counts."""
    vars_file = root / "roles/rpc_server/vars/main.yml"
    expr = (_yaml(vars_file) or {}).get("rpc_server__default_threads")
    if not isinstance(expr, str):
        return [f"{_rel(root, vars_file)}: rpc_server__default_threads missing"]
    template = jinja2.Environment().from_string(expr)
    for cores in (1, 2, 3, 8, 64):
        for count in (1, 2, 3, 5):
            ctx = {"rpc_server_threads": cv.RPC_THREADS_AUTO, "rpc_server__cpu_count": cores}
            got = template.render(ctx, rpc_server__instances=[{}] * count).strip()
            want = cv.rpc_threads(cores, count)
            if got != str(want):
                return [
                    f"{_rel(root, vars_file)}: rpc_server__default_threads gives {got} threads for {cores} cores and "
                    f"{count} instance(s), cluster_vars.rpc_threads gives {want}"
                ]
    return []


def _check_python(root: Path, cv: ModuleType) -> list[str]:
    """Literals in the package that restate a fact instead of naming cluster_vars."""
    exact = {cv.RPC_GROUP: "RPC_GROUP", cv.LLAMA_PREFIX: "LLAMA_PREFIX"}
    exact |= {name: "RPC_SERVER_NAMES" for name in cv.RPC_SERVER_NAMES}
    defaults_only = {cv.COORDINATOR_GROUP: "COORDINATOR_GROUP"}  # also a JSON key and a label elsewhere
    ports = {cv.DEFAULT_PORT: "DEFAULT_PORT", cv.GATEWAY_PORT: "GATEWAY_PORT"}
    facts = [*exact, *defaults_only, cv.LLAMA_REF, *ports]
    problems = []
    for path in sorted((root / "sollol_ops").rglob("*.py")):
        if path == root / "sollol_ops" / "cluster" / "facts.py":
            continue
        source = path.read_text()
        if not any(str(fact) in source for fact in facts):  # a literal of a fact would show its text
            continue
        nodes = list(ast.walk(ast.parse(source, str(path))))
        docstrings = {
            id(node.body[0].value)
            for node in nodes
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        default_nodes = set()
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                default_nodes |= {id(d) for d in node.args.defaults + node.args.kw_defaults if d is not None}
            elif (isinstance(node, ast.keyword) and node.arg == "default") or (
                isinstance(node, ast.AnnAssign) and node.value is not None
            ):
                default_nodes.add(id(node.value))
        for node in nodes:
            if not isinstance(node, ast.Constant) or id(node) in docstrings:
                continue
            value, name = node.value, None
            if isinstance(value, str):
                name = exact.get(value)
                if name is None and id(node) in default_nodes:
                    name = defaults_only.get(value)
                if name is None and (cv.LLAMA_REF in value or (cv.LLAMA_PREFIX in value)):
                    name = "LLAMA_REF" if cv.LLAMA_REF in value else "LLAMA_PREFIX"
            elif isinstance(value, int) and not isinstance(value, bool) and value in ports:
                name = ports[value]
            if name:
                problems.append(f"{_rel(root, path)}:{node.lineno}: literal {value!r}: use cluster_vars.{name}")
    return problems
