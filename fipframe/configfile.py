"""Reading config files safely: size, depth and alias limits before anything is built.

A config is small; a file that is not (a 48 MB list, 1,000-deep nesting, a "billion laughs"
of YAML aliases) is refused before it is parsed into Python objects or validated, with a
message naming the file, the line and the limit. Duplicate keys, which YAML would silently
resolve to the last one, are refused naming both lines.

The limits are :class:`Limits` (defaults 1 MB, depth 64, 200,000 nodes counting every alias
expansion); the environment variables ``FIPFRAME_CONFIG_MAX_BYTES``,
``FIPFRAME_CONFIG_MAX_DEPTH`` and ``FIPFRAME_CONFIG_MAX_NODES`` change them.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fipframe.errors import ConfigError

ENV = {
    "max_bytes": "FIPFRAME_CONFIG_MAX_BYTES",
    "max_depth": "FIPFRAME_CONFIG_MAX_DEPTH",
    "max_nodes": "FIPFRAME_CONFIG_MAX_NODES",
}


@dataclass(frozen=True)
class Limits:
    """How large a config may be."""

    max_bytes: int = 1_000_000
    max_depth: int = 64
    max_nodes: int = 200_000

    @classmethod
    def from_env(cls) -> Limits:
        values: dict[str, int] = {}
        for field, var in ENV.items():
            raw = os.environ.get(var)
            if raw is None:
                continue
            try:
                values[field] = int(raw)
                if values[field] < 1:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{var}={raw!r}: expected a positive integer") from None
        return cls(**values)

    def refuse(self, where: str, what: str, field: str) -> ConfigError:
        limit = getattr(self, field)
        return ConfigError(f"{where}: {what} (limit {limit:,}; raise it with {ENV[field]})")


# -- YAML ---------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        mark = key_node.start_mark
        try:
            first = seen.setdefault(key, mark)
        except TypeError:  # an unhashable key; the constructor reports it
            continue
        if first is not mark:
            where = f"line {mark.line + 1}"
            if first.line == mark.line:
                where += f", column {mark.column + 1} (first at column {first.column + 1})"
            else:
                where += f" (first at line {first.line + 1})"
            raise ConfigError(f"duplicate key {key!r} at {where}")
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _scan_yaml(text: str, limits: Limits, where: str) -> None:
    """Depth and expanded size from the event stream (no Python objects are built)."""
    height: dict[str, int] = {}  # anchor -> depth of the node it names
    size: dict[str, int] = {}  # anchor -> nodes it expands to
    stack: list[tuple[str | None, int, int]] = []  # (anchor, nodes at start, max depth inside)
    nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = getattr(event, "start_mark", None)
        at = f" at line {line.line + 1}" if line is not None else ""
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            nodes += 1
            stack.append((event.anchor, nodes, len(stack) + 1))
            if len(stack) > limits.max_depth:
                raise limits.refuse(where, f"nested deeper than allowed{at}", "max_depth")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, start, deepest = stack.pop()
            if stack:
                a, s, d = stack[-1]
                stack[-1] = (a, s, max(d, deepest))
            if anchor:
                size[anchor] = nodes - start + 1
                height[anchor] = deepest - len(stack)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor:
                size[event.anchor], height[event.anchor] = 1, 0
        elif isinstance(event, yaml.AliasEvent):
            nodes += size.get(event.anchor, 1)
            reach = len(stack) + height.get(event.anchor, 0)
            if reach > limits.max_depth:
                raise limits.refuse(where, f"an alias nests deeper than allowed{at}", "max_depth")
            if stack:
                a, s, d = stack[-1]
                stack[-1] = (a, s, max(d, reach))
        if nodes > limits.max_nodes:
            raise limits.refuse(
                where, f"more values than allowed{at} (aliases counted as expanded)", "max_nodes"
            )


# -- JSON ---------------------------------------------------------------------------------------
def _scan_json(text: str, limits: Limits, where: str) -> None:
    depth, in_string, escaped, line = 0, False, False, 1
    for ch in text:
        if ch == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limits.max_depth:
                raise limits.refuse(
                    where, f"nested deeper than allowed at line {line}", "max_depth"
                )
        elif ch in "]}":
            depth -= 1


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"duplicate key {key!r}")
        out[key] = value
    return out


# -- any mapping ----------------------------------------------------------------------------------
def check_tree(data: Any, limits: Limits, where: str) -> None:
    """Depth and node count of an already built mapping (from Python, or after overrides)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise limits.refuse(where, "more values than allowed", "max_nodes")
        if isinstance(node, Mapping):
            children: Iterable[Any] = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > limits.max_depth:
            raise limits.refuse(where, "nested deeper than allowed", "max_depth")
        stack.extend((c, depth + 1) for c in children)


def read_file(path: str | Path, limits: Limits | None = None) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping, with file-named errors."""
    limits = limits or Limits.from_env()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise limits.refuse(str(p), f"{size:,} bytes is larger than a config", "max_bytes")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}, line {line})") from None
    try:
        if p.suffix == ".json":
            _scan_json(text, limits, str(p))
            data = json.loads(text, object_pairs_hook=_pairs)
        else:
            _scan_yaml(text, limits, str(p))
            data = yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except ConfigError as exc:
        if exc.source is None and not str(exc).startswith(str(p)):
            raise ConfigError(exc.problems, str(p)) from None
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML{where}: {problem}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise limits.refuse(str(p), "nested deeper than allowed", "max_depth") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides (values parsed as YAML) to a config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected path=value")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"--set {item!r}: expected path=value (the path is empty)")
        try:
            _scan_yaml(raw, Limits.from_env(), f"--set {key}")
            value = yaml.load(raw, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"--set {key}: the value {raw!r} is not valid YAML ({problem})"
            ) from None
        parts: list[Any] = [int(k) if k.isdigit() else k for k in key.split(".")]
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _child(
                node,
                part,
                ".".join(map(str, parts[: i + 1])),
                key,
                parts[i + 1],
                parts[i - 1] if i > 0 else None,
            )
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise ConfigError(
                    f"--set {key}: no such place in the config ({_parent(parts)} is a list of "
                    f"{len(node)})"
                )
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(
                f"--set {key}: no such place in the config ({_parent(parts)} is a value, "
                "not a mapping)"
            )
    return data


def _parent(parts: list[Any]) -> str:
    return ".".join(map(str, parts[:-1])) or "the top level"


#: config fields that name an implementation (``metric: kl`` = ``metric: {kind: kl}``); the
#: list ones hold such entries (``objectives: [task_ce]``)
KIND_SLOTS = frozenset({"model", "data", "manifold", "integrator", "metric"})
KIND_LISTS = frozenset({"objectives", "loggers"})


def _child(node: Any, part: Any, so_far: str, key: str, next_part: Any, parent: Any = None) -> Any:
    if (
        isinstance(node, dict)
        and part in KIND_SLOTS
        and isinstance(node.get(part), str)
        and isinstance(next_part, str)
    ):
        node[part] = {"kind": node[part]}  # `metric: kl` is `metric: {kind: kl}`: one place
    if (
        isinstance(node, list)
        and parent in KIND_LISTS
        and isinstance(part, int)
        and part < len(node)
        and isinstance(node[part], str)
        and isinstance(next_part, str)
    ):
        node[part] = {"kind": node[part]}  # objectives: [task_ce] -> objectives.0.weight
    if isinstance(node, dict) and part in node and node[part] is not None:
        return node[part]
    if isinstance(node, dict) and isinstance(part, str) and isinstance(next_part, str):
        node[part] = {}  # a section left to its defaults (`run:` absent): validation checks it
        return node[part]
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    from fipframe.registry import did_you_mean

    if isinstance(node, dict):
        hint = did_you_mean(str(part), [str(k) for k in node])
        raise ConfigError(f"--set {key}: no such place in the config (no {so_far}){hint}")
    if isinstance(node, list):
        raise ConfigError(
            f"--set {key}: no such place in the config ({so_far}: the list has {len(node)} items)"
        )
    raise ConfigError(f"--set {key}: no such place in the config ({so_far} is inside a value)")


# -- templates ----------------------------------------------------------------------------------
_VAR = re.compile(r"\{([A-Za-z_]\w*)\}")
DEFAULTS_KEY = "stage_defaults"


def expand_templates(data: dict[str, Any]) -> dict[str, Any]:
    """Write out the two shorthands of a config file, before overrides and validation (so an
    override addresses the stages as written out, and config.yaml holds them in full):

    - ``stage_defaults: {...}``: fields every stage (shared and per branch) starts from; a
      stage's own value wins. Mappings are merged field by field when the stage's has the same
      ``kind`` (or none); a mapping of another kind, a list or a value replaces the default.
    - a stage-list item ``{repeat: {VAR: [v1, v2, ...], ...}, stage: {...}}``: one stage per
      value (``stages: [...]`` instead of ``stage:``: those stages, in order, per value), with
      ``"{VAR}"`` replaced in every string (a string that is exactly ``"{VAR}"`` takes the
      value itself, so ``task: "{task}"`` is a number). Several variables take their values
      together (equal lengths), not as a product.
    """
    if not isinstance(data, dict):
        return data
    data = unshare(data)  # a YAML alias is a copy, not one object in two places
    defaults = data.pop(DEFAULTS_KEY, None)
    if defaults is not None and not isinstance(defaults, dict):
        raise ConfigError(f"{DEFAULTS_KEY}: expected a mapping of stage fields, got {defaults!r}")
    if isinstance(data.get("stages"), list):
        data["stages"] = _expand_list(data["stages"], "stages", defaults)
    if isinstance(data.get("branches"), dict):
        for name, stages in data["branches"].items():
            if isinstance(stages, list):
                data["branches"][name] = _expand_list(stages, f"branches.{name}", defaults)
    return data


def _expand_list(items: list[Any], where: str, defaults: dict[str, Any] | None) -> list[Any]:
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "repeat" in item:
            out += _repeat(item, f"{where}[{i}]")
        else:
            out.append(item)
    if defaults:
        out = [_merge(defaults, s) if isinstance(s, dict) else s for s in out]
    return out


def _repeat(item: dict[str, Any], where: str) -> list[Any]:
    extra = sorted(set(item) - {"repeat", "stage", "stages"})
    if extra or len({"stage", "stages"} & set(item)) != 1:
        raise ConfigError(
            f"{where}: a repeat item has `repeat:` and one of `stage:` (a stage) or `stages:` "
            "(stages repeated together)"
            + (f"; unexpected {', '.join(map(repr, extra))}" if extra else "")
        )
    spec = item["repeat"]
    body = [item["stage"]] if "stage" in item else item["stages"]
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}.repeat: expected a mapping VAR: [values], got {spec!r}")
    if not isinstance(body, list) or not body or not all(isinstance(b, dict) for b in body):
        what = "stage" if "stage" in item else "stages"
        raise ConfigError(f"{where}.{what}: expected stage mappings, got {item[what]!r}")
    lengths = {}
    for var, values in spec.items():
        if not isinstance(var, str) or not _VAR.fullmatch("{" + var + "}"):
            raise ConfigError(f"{where}.repeat: {var!r} is not a variable name (letters, _)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.repeat.{var}: expected a non-empty list, got {values!r}")
        lengths[var] = len(values)
    if len(set(lengths.values())) > 1:
        said = ", ".join(f"{v}: {n}" for v, n in lengths.items())
        raise ConfigError(f"{where}.repeat: the lists differ in length ({said}); they go together")
    used = _variables(body)
    unused = [v for v in spec if v not in used]
    if unused:
        raise ConfigError(
            f"{where}.repeat: {', '.join(map(repr, unused))} appear nowhere in the stage "
            '(write it as "{' + unused[0] + '}")'
        )
    n = next(iter(lengths.values()))
    return [_fill(copy.deepcopy(b), {v: spec[v][k] for v in spec}) for k in range(n) for b in body]


def _variables(node: Any) -> set[str]:
    if isinstance(node, str):
        return set(_VAR.findall(node))
    if isinstance(node, dict):
        return set().union(*(_variables(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_variables(v) for v in node)) if node else set()
    return set()


def _fill(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, str):
        whole = _VAR.fullmatch(node)
        if whole and whole.group(1) in values:
            return values[whole.group(1)]
        return _VAR.sub(lambda m: str(values.get(m.group(1), m.group(0))), node)
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    return node


def unshare(node: Any) -> Any:
    """A copy in which no dict or list appears twice (``copy.deepcopy`` keeps the sharing)."""
    if isinstance(node, dict):
        return {k: unshare(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unshare(v) for v in node]
    return node


def _kinded(key: str, value: Any) -> Any:
    return {"kind": value} if key in KIND_SLOTS and isinstance(value, str) else value


def _merge(defaults: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    out = {k: _kinded(k, copy.deepcopy(v)) for k, v in defaults.items()}
    for key, value in stage.items():
        value = _kinded(key, value)  # the shorthand merges as its long form does
        base = out.get(key)
        if (
            isinstance(base, dict)
            and isinstance(value, dict)
            and value.get("kind", base.get("kind")) == base.get("kind")
        ):
            out[key] = _merge(base, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
