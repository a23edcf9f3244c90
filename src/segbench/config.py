"""Load and validate the benchmark configuration.

The JSON schema ``schemas/config.schema.yaml`` (package data of segbench) is the single
description of every key; the names that exist (architectures, loss types, dataset sources
and label sets) are filled into it from :mod:`segbench.catalog` when it is loaded.
:func:`validate_config` checks a config mapping against it, reports *every* problem with the
key's dotted path and the allowed values, fills in the schema's defaults, and then checks
what a schema cannot: that every name a study uses is defined.

Grids (:func:`expand_grids`) generate named entries of ``losses`` and ``models`` from a
base entry, explicit rows and/or a product of axes, before the schema check, so the rest
of the pipeline sees plain named entries; an error in a generated entry is reported at the
grid's key (``grids.losses.bal.rows[3].kernel``). Study lists may name entries by glob
pattern (``bal_gauss_*``), expanded here to the matching names in definition order.

No torch or mlflow here: the Snakefile imports this module at start-up.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import itertools
import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from segbench import catalog
from segbench.errors import UserError

#: the config's JSON schema, package data of segbench (src/segbench/schemas/)
SCHEMA_RESOURCE = "schemas/config.schema.yaml"
#: the longest name of a dataset, model, loss, study, ablation or grid (its ``maxLength``), and
#: of a generated grid entry: names are folders of every run's path, so each fits a file
#: system's 255-byte name limit
NAME_MAX = 64
#: the largest integer anywhere in a config (2**32 - 1; the schema sets smaller maxima for some keys)
INT_MAX = 2**32 - 1
#: the most values a config may hold once its YAML aliases are expanded (a few thousand is large)
VALUES_MAX = 100_000


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message lists every problem found."""


def load_schema(path: str | Path | None = None) -> dict:
    """The config's JSON schema (the package's own, or the file at ``path``), with the allowed
    ``arch``, loss ``type``, dataset ``source`` and ``labels`` of :mod:`segbench.catalog`."""
    if path:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config schema not found at {path}")
        text = path.read_text(encoding="utf-8")
    else:
        from importlib import resources

        text = resources.files("segbench").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return _with_catalog(yaml.safe_load(text))


def _with_catalog(schema: dict) -> dict:
    """``schema`` with the catalog's names as the enums of the keys that name what exists."""
    entries = {kind: schema["properties"][kind]["additionalProperties"]["properties"]
               for kind in ("datasets", "models", "losses")}
    entries["datasets"]["source"]["enum"] = list(catalog.DATASET_SOURCES)
    entries["datasets"]["labels"]["enum"] = list(catalog.LABEL_SETS)
    entries["models"]["arch"]["enum"] = list(catalog.ARCHITECTURES)
    entries["losses"]["type"]["enum"] = list(catalog.LOSSES)
    return schema


#: the keys that name a built-in architecture or loss, or one of the user's by import path
_IMPORT_PATH_KEYS = (("models", "arch"), ("losses", "type"))


def _is_own_name(error) -> bool:
    """Whether a schema error is the enum of ``models.X.arch`` / ``losses.X.type`` refusing a
    well-formed import path (checked by :func:`_import_path_problems` instead)."""
    path = tuple(error.absolute_path)
    return (error.validator == "enum" and len(path) == 3 and (path[0], path[2]) in _IMPORT_PATH_KEYS
            and isinstance(error.instance, str) and re.match(catalog.IMPORT_PATH_PATTERN, error.instance) is not None)


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _is_float(text: str) -> bool:
    """Whether ``text`` is a finite number as Python reads it (YAML 1.1 reads 1e-3 as text)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parent_of(parts: tuple, key: str) -> tuple:
    """The path holding ``key`` (a grid's product axis is followed by the value's index)."""
    parts = tuple(parts)
    while parts and parts[-1] != key:
        parts = parts[:-1]
    return parts[:-1]


def _describe(error, schema_root: dict, locate: Callable[[tuple], tuple] | None = None) -> list[str]:
    """Turn a jsonschema error into messages naming the key path and the allowed values.

    ``locate`` maps a path in the (grid-expanded) config to the path to report.
    """
    from jsonschema.exceptions import ValidationError  # noqa: F401  (type only)

    locate = locate or tuple
    if error.context and error.validator in ("oneOf", "anyOf"):
        # e.g. eval_size: a size or null; report the most specific alternative
        best = sorted(error.context, key=lambda e: -len(e.path))[0]
        return _describe(best, schema_root, locate)
    path = tuple(error.absolute_path)
    where = _key_path(locate(path))
    v, schema = error.validator, error.schema
    if v == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in schema.get("properties", {})]
        return [
            f"config key '{_key_path(_parent_of(locate(path + (k,)), k))}': unknown key '{k}'"
            f"{_suggest(k, allowed)}; allowed keys: {', '.join(allowed) or '(none)'}"
            for k in extra
        ]
    if v == "not" and "description" in schema:
        return [f"config key '{where}': {error.instance!r} is not allowed; expected {schema['description']}"]
    if v == "enum":
        own = ""
        if len(path) == 3 and (path[0], path[2]) in _IMPORT_PATH_KEYS:
            own = ("; or a class or function of your own as an import path, package.module:Name "
                   "(docs/extending.md)")
            text = error.instance
            if isinstance(text, str) and "." in text and ":" not in text:
                module, _, attr = text.rpartition(".")
                own += f"; an import path has a colon before the name: '{module}:{attr}'"
        return [
            f"config key '{where}': {error.instance!r} is not allowed{_suggest(error.instance, schema['enum'])}; "
            f"allowed values: {', '.join(map(str, schema['enum']))}{own}"
        ]
    if v == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"config key '{where}': missing required key '{k}'" for k in missing]
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        hint = ""
        if "integer" in want and isinstance(error.instance, float) and error.instance.is_integer():
            hint = f"; write {int(error.instance)}, without the decimal point"
        elif isinstance(error.instance, bool) and ("integer" in want or "number" in want):
            hint = "; write a number (YAML's true/false are not numbers here)"
        elif isinstance(error.instance, str) and ("integer" in want or "number" in want) and _is_float(error.instance):
            if "e" in error.instance.lower():
                hint = (f"; YAML reads {error.instance} as text (its exponent form needs a decimal point, "
                        f"e.g. 1.0e-3): write {float(error.instance)!r}")
            else:
                hint = f"; write {error.instance.strip()} without quotes"
        return [f"config key '{where}': expected {want}, got {error.instance!r}{hint}"]
    if "propertyNames" in error.relative_schema_path and schema.get("maxLength") == NAME_MAX:  # $defs/name
        name = error.instance
        if v == "maxLength":
            return [f"config key '{where}': name {name!r} is {len(name)} characters long; at most {NAME_MAX} "
                    "are allowed (names are folders of every run's path); give it a shorter name"]
        return [f"config key '{where}': name {name!r} is not allowed; a name is 1 to {NAME_MAX} ASCII letters, "
                "digits, _ . - starting with a letter or digit (names are folders of every run's path); "
                "rename it"]
    if v in ("minItems", "minProperties") and len(error.instance) == 0:
        kind = path[-1] if path else ""
        if kind in ("datasets", "models", "losses"):
            what = f"name at least one entry defined under '{kind}'"
        elif kind == "studies":
            what = "define at least one study (a matrix of datasets, models and losses)"
        else:
            what = "give at least one entry, or remove the key to take the default"
        return [f"config key '{where}': is empty; {what}"]
    if v == "uniqueItems" and isinstance(error.instance, list):
        seen, twice = set(), []
        for item in error.instance:
            key = repr(item)
            if key in seen and key not in twice:
                twice.append(key)
            seen.add(key)
        return [f"config key '{where}': {', '.join(twice)} listed twice; remove the repeat"]
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and not isinstance(error.instance, bool):
        bound = error.validator_value
        want = {"minimum": f"{bound} or more", "maximum": f"at most {bound}",
                "exclusiveMinimum": f"above {bound}", "exclusiveMaximum": f"below {bound}"}[v]
        return [f"config key '{where}': {error.message}; give a value {want}"]
    if v == "propertyNames":
        return [f"config key '{where}': name {error.instance!r} must match {schema.get('pattern')} (letters, digits, _ . -)"]
    return [f"config key '{where}': {error.message}"]


def _fill_defaults(instance: Any, schema: dict, root: dict, path: tuple = ()) -> None:
    """Fill ``default`` values of object properties in place (recursively).

    The ``train`` blocks of dataset and model entries are partial overrides of the global
    ``train`` block, so they are left as written (see :mod:`segbench.plan`).
    """
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    if not isinstance(instance, dict):
        return
    if len(path) == 3 and path[0] in ("datasets", "models") and path[2] == "train":
        return
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root, path + (key,))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in props:
                _fill_defaults(value, extra, root, path + (key,))


# ----------------------------------------------------------------------------- grids

GRID_KINDS = ("losses", "models")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: a name ending in one piece repeated 20 times or more ('aaaaaaaaaaaaaaaaaaaa', 'ab' x 20): the
#: workflow's wildcards refuse it (Snakemake's PeriodicityDetector takes it for an endless recursion)
_PERIODIC_RE = re.compile(r"(.+)\1{19,}$")


class _Origins:
    """Where each key of a generated entry comes from, so errors name the grid's key path."""

    def __init__(self) -> None:
        # (kind, name) -> (grid key path, {entry key path: key path relative to the grid})
        self.entries: dict[tuple[str, str], tuple[tuple, dict[tuple, tuple]]] = {}

    def add(self, kind: str, name: str, grid: tuple, sources: dict[tuple, tuple]) -> None:
        self.entries[(kind, name)] = (grid, sources)

    def entry_of(self, path) -> str | None:
        path = tuple(path)
        if len(path) >= 2 and (path[0], path[1]) in self.entries:
            return f"{path[0]}.{path[1]}"
        return None

    def locate(self, path) -> tuple:
        path = tuple(path)
        if len(path) < 2 or (path[0], path[1]) not in self.entries:
            return path
        grid, sources = self.entries[(path[0], path[1])]
        rest = path[2:]
        for n in range(len(rest), 0, -1):
            if rest[:n] in sources:
                return grid + sources[rest[:n]] + rest[n:]
        return grid + ("base",) + rest


def _name_value(value: Any) -> str:
    """A value as it appears in a generated name: 3.0 -> 3, [1, 3, 5] -> 1-3-5, True -> true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_name_value(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, dict):
        raise TypeError("a mapping")
    return str(value)


def _set_path(entry: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = entry
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = copy.deepcopy(value)


def _expand_grid(kind: str, prefix: str, grid: dict, where: tuple) -> tuple[list[tuple[str, dict, dict]], list[str]]:
    """[(name, entry, sources)] of one grid, and its problems. ``where``: the grid's key path."""
    problems: list[str] = []
    base = grid.get("base")
    rows = grid.get("rows", [{}])
    product = grid.get("product", {})
    name_parts = grid.get("name_parts") or {}
    abbrev = grid.get("abbreviations") or {}
    if not isinstance(base, dict) or not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows) \
            or not isinstance(product, dict) or not all(isinstance(v, list) and v for v in product.values()) \
            or not isinstance(name_parts, dict) or not isinstance(abbrev, dict):
        return [], []  # malformed: the schema check reports it at the grid's key path
    if "rows" not in grid and "product" not in grid:
        return [], [f"config key '{_key_path(where)}': a grid needs `rows`, `product` or both"]
    both = [k for k in product if any(k in r for r in rows)]
    if both:
        return [], [f"config key '{_key_path(where + ('product', both[0]))}': '{both[0]}' is also set by "
                    "`rows`; set each key either in rows or in product"]
    out: list[tuple[str, dict, dict]] = []
    seen: dict[str, tuple] = {}
    axes_p = list(product)
    for i, row in enumerate(rows):
        for combo in itertools.product(*(list(enumerate(product[k])) for k in axes_p)):
            entry = copy.deepcopy(base)
            sources: dict[tuple, tuple] = {}
            values: dict[str, Any] = {}
            origin: tuple = ()
            if "rows" in grid:
                origin = ("rows", i)
            for key, value in row.items():
                _set_path(entry, key, value)
                sources[tuple(key.split("."))] = ("rows", i, key)
                values[key] = value
            for key, (j, value) in zip(axes_p, combo):
                _set_path(entry, key, value)
                sources[tuple(key.split("."))] = ("product", key, j)
                values[key] = value
            order = [k for k in name_parts if k in values] + [k for k in values if k not in name_parts]
            parts = []
            for key in order:
                try:
                    shown = _name_value(values[key])
                except TypeError:
                    loc = sources[tuple(key.split("."))]
                    problems.append(f"config key '{_key_path(where + loc)}': a mapping cannot be part of a "
                                    f"generated name; set its keys one by one (e.g. '{key}.<key>')")
                    shown = "?"
                label = name_parts.get(key, key.split(".")[-1])
                parts.append(f"{label}{abbrev.get(shown, shown)}")
            name = "_".join([prefix, *parts])
            at = where + origin + (("product",) if combo and not origin else ())
            if not _NAME_RE.match(name):
                problems.append(f"config key '{_key_path(at)}': generated name '{name}' is not a valid name "
                                "(letters, digits, _ . -); change name_parts or abbreviations")
            elif len(name) > NAME_MAX:
                problems.append(f"config key '{_key_path(at)}': generated name '{name}' is {len(name)} characters "
                                f"long, more than {NAME_MAX}; shorten the grid's name, its name_parts or its "
                                "abbreviations")
            elif name in seen:
                problems.append(f"config key '{_key_path(at)}': generates '{name}' a second time (first from "
                                f"'{_key_path(seen[name])}'); rows and product values must differ")
            else:
                seen[name] = at
                out.append((name, entry, sources))
    return out, problems


def _plain_copy(value: Any) -> Any:
    """A copy of ``value`` in which no mapping or list appears twice: YAML aliases and merge keys
    (``<<: *base``) share one object between entries, and defaults are filled in place."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def _expand_grids(config: dict) -> tuple[dict, list[str], _Origins]:
    cfg = _plain_copy(config)
    origins = _Origins()
    problems: list[str] = []
    grids = cfg.get("grids")
    if not isinstance(grids, dict):
        return cfg, problems, origins
    for kind in GRID_KINDS:
        section = grids.get(kind)
        if not isinstance(section, dict):
            continue
        for prefix, grid in section.items():
            if not isinstance(grid, dict) or not isinstance(prefix, str) or not _NAME_RE.match(prefix):
                continue  # the schema check reports it
            where = ("grids", kind, prefix)
            entries, probs = _expand_grid(kind, prefix, grid, where)
            problems += probs
            target = cfg.get(kind)
            if target is None:
                target = cfg[kind] = {}
            if not isinstance(target, dict):
                continue
            for name, entry, sources in entries:
                if name in target:
                    problems.append(f"config key '{_key_path(where)}': generates '{name}', which is already "
                                    f"defined under '{kind}'; rename the grid or the entry")
                    continue
                target[name] = entry
                origins.add(kind, name, where, sources)
    return cfg, problems, origins


def expand_grids(config: dict) -> dict:
    """A copy of ``config`` with the entries of ``grids`` added under ``losses`` / ``models``
    (and ``grids`` removed). Only the expansion is checked here; see :func:`validate_config`."""
    cfg, problems, _ = _expand_grids(config)
    if problems:
        raise ConfigError(_format(problems))
    cfg.pop("grids", None)
    return cfg


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


# ----------------------------------------------------------------------------- embeddings


def _check_embeddings(cfg: dict) -> list[str]:
    """A study pairing a loss that needs embeddings with a model without an embedding head
    (the catalog's flags) fails at start-up, before any job runs."""
    matrices = [(f"studies.{study}.losses", spec["models"], spec["losses"]) for study, spec in cfg["studies"].items()]
    matrices += [(f"studies.{study}.ablations.{name}.losses", abl["models"], abl["losses"])
                 for study, spec in cfg["studies"].items() for name, abl in spec["ablations"].items()]
    if cfg["cross_study"].get("methods"):
        matrices += [(f"cross_study.methods[{i}]", [m], [l]) for i, (m, l) in enumerate(cross_methods(cfg))]
    problems = []
    for where, models, losses in matrices:
        for loss in losses:
            kind = cfg["losses"][loss]["type"]
            if not catalog.needs_embeddings(kind):
                continue
            lacking = [m for m in models if not catalog.has_embeddings(cfg["models"][m]["arch"])]
            if lacking:
                problems.append(
                    f"config key '{where}': loss '{loss}' ({kind}) needs pixel embeddings, "
                    f"but model{'s' if len(lacking) > 1 else ''} "
                    f"{', '.join(repr(m) + ' (' + cfg['models'][m]['arch'] + ')' for m in lacking)} "
                    f"ha{'ve' if len(lacking) > 1 else 's'} no embedding head; architectures with one: "
                    f"{', '.join(catalog.embedding_architectures())}. Put this loss in a study of such models")
    return problems


def _import_path_problems(cfg: dict) -> list[str]:
    """Models and losses named by import path (``arch: mypkg.models:MyNet``, ``type:
    mypkg.losses:my_loss``): the module imports, the attribute is a class or function, and it
    accepts ``num_classes`` and the entry's ``params`` (a model) or the ``params`` (a loss).
    Only such entries import anything (the user's module, which may import torch)."""
    problems = []
    for name, m in cfg["models"].items():
        if catalog.is_import_path(m["arch"]):
            where = f"config key 'models.{name}.arch'"
            params = {"num_classes": 1, **(m.get("params") or {})}
            problems += _own_target_problems(where, m["arch"], params)
    for name, loss in cfg["losses"].items():
        if catalog.is_import_path(loss["type"]):
            where = f"config key 'losses.{name}.type'"
            problems += _own_target_problems(where, loss["type"], dict(loss.get("params") or {}))
    return problems


def _own_target_problems(where: str, path: str, args: dict) -> list[str]:
    try:
        target = catalog.load_target(path)
    except catalog.ImportPathError as e:
        return [f"{where}: {e}"]
    problem = catalog.call_problem(path, target, args)
    return [f"{where}: {problem}"] if problem else []


#: the papers whose tables a study can reproduce (a study named like one defaults to it)
PAPERS = ("gradnet", "pac_bal", "frm", "unet_segnet")
#: the pseudo-study holding the cross-study runs (``cross_study`` in the config)
CROSS_STUDY = "cross_study"


def _resolve_names(cfg: dict, kind: str, names: list[str], where: str, problems: list[str]) -> list[str]:
    """Names of a matrix axis with glob patterns expanded (definition order, no repeats);
    an unknown name or a pattern matching nothing is a problem naming its key."""
    defined = list(cfg[kind])
    out: list[str] = []
    for i, name in enumerate(names):
        if _is_pattern(name):
            matched = [n for n in defined if fnmatch.fnmatchcase(n, name)]
            if not matched:
                problems.append(f"config key '{where}.{kind}[{i}]': pattern '{name}' matches no entry under "
                                f"'{kind}'; defined: {', '.join(defined)}")
            out += [n for n in matched if n not in out]
        elif name not in cfg[kind]:
            problems.append(f"config key '{where}.{kind}[{i}]': '{name}' is not defined under "
                            f"'{kind}'{_suggest(name, defined)}; allowed values: {', '.join(defined)}")
        elif name not in out:
            out.append(name)
    return out


def study_matrices(cfg: dict) -> list[tuple[str, str, dict]]:
    """(study, group, matrix) of every enabled matrix: each study's own ("main") and its
    enabled ablations (none when the top-level ``ablations`` is false)."""
    out = []
    for study, spec in cfg["studies"].items():
        out.append((study, "main", spec))
        if cfg.get("ablations", True):
            out += [(study, name, abl) for name, abl in spec.get("ablations", {}).items() if abl.get("enabled", True)]
    return out


def cross_methods(cfg: dict) -> list[tuple[str, str]]:
    """(model, loss) pairs of the cross study: ``cross_study.methods`` or every pair of the
    studies' main matrices, in order of appearance."""
    cross = cfg.get("cross_study") or {}
    if cross.get("methods"):
        return [tuple(m.split("/", 1)) for m in cross["methods"]]
    pairs: dict[tuple[str, str], None] = {}
    for spec in cfg["studies"].values():
        for model in spec["models"]:
            for loss in spec["losses"]:
                pairs.setdefault((model, loss), None)
    return list(pairs)


def _cross_study_problems(cfg: dict) -> list[str]:
    cross = cfg["cross_study"]
    problems: list[str] = []
    cross["datasets"] = _resolve_names(cfg, "datasets", cross["datasets"], "cross_study", problems)
    for i, method in enumerate(cross.get("methods") or []):
        model, loss = method.split("/", 1)
        for kind, name in (("models", model), ("losses", loss)):
            if name not in cfg[kind]:
                problems.append(f"config key 'cross_study.methods[{i}]': {kind[:-1]} '{name}' of '{method}' is "
                                f"not defined under '{kind}'{_suggest(name, list(cfg[kind]))}")
    return problems


def _count_values(value: Any, counted: dict[int, int]) -> int:
    """How many values ``value`` holds with YAML aliases expanded; an alias is the same Python
    object as its anchor, so each mapping or list is counted once (``counted``, by id)."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) not in counted:
        items = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        counted[id(value)] = 1 + sum(_count_values(v, counted) for v in items)
    return counted[id(value)]


def _value_problems(value: Any, path: tuple = ()) -> tuple[list[str], list[tuple]]:
    """Numbers the schema's bounds let through: NaN and infinities (every comparison with NaN
    is false, so ``minimum`` passes it) and integers above :data:`INT_MAX` anywhere in the
    config. Returns the messages and the key paths they are about."""
    problems: list[str] = []
    paths: list[tuple] = []
    if isinstance(value, dict):
        for key, item in value.items():
            more, at = _value_problems(item, path + (key,))
            problems += more
            paths += at
    elif isinstance(value, list):
        for i, item in enumerate(value):
            more, at = _value_problems(item, path + (i,))
            problems += more
            paths += at
    elif isinstance(value, float) and not math.isfinite(value):
        shown = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        problems.append(f"config key '{_key_path(path)}': {shown} is not a finite number; give a number "
                        "(e.g. 0.002 for a learning rate)")
        paths.append(path)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        problems.append(f"config key '{_key_path(path)}': {value} is too large; integers in the config are at most "
                        f"{INT_MAX} (2**32 - 1), some keys less; give a smaller number")
        paths.append(path)
    return problems, paths


def _strict_validator(schema: dict):
    """A draft 2020-12 validator for which an integer is an int, not a float such as 2.0
    (json schema counts 2.0 as an integer, but range(2.0) and torch refuse it)."""
    from jsonschema import Draft202012Validator, validators

    def is_integer(checker, instance) -> bool:
        return isinstance(instance, int) and not isinstance(instance, bool)

    types = Draft202012Validator.TYPE_CHECKER.redefine("integer", is_integer)
    return validators.extend(Draft202012Validator, type_checker=types)(schema)


def validate_config(config: dict, schema_path: str | Path | None = None) -> dict:
    """Return a validated copy of ``config`` with defaults filled; raise ConfigError."""
    if config is None or config == {}:
        raise ConfigError("the configuration is empty; write the benchmark's keys (datasets, models, losses, "
                          "studies, ...) into it, as in the repository's config.yaml (see the README)")
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration is a {_kind_of(config)}, not a mapping of keys; its top level "
                          "must be keys such as `datasets:`, `models:`, `losses:` and `studies:`, as in the "
                          "repository's config.yaml (see the README)")
    size = _count_values(config, {})
    if size > VALUES_MAX:
        raise ConfigError(f"the configuration holds {size} values once its YAML aliases (*name) are expanded, "
                          f"more than {VALUES_MAX}; an anchor repeated through aliases of aliases multiplies "
                          "(a 'billion laughs' file): write the repeated parts out or use fewer aliases")
    schema = load_schema(schema_path)
    validator = _strict_validator(schema)
    problems, bad_values = _value_problems(config)
    expanded, grid_problems, origins = _expand_grids(config)
    problems += grid_problems
    # a message reported for several generated entries (a typo in a grid's base) is listed once
    found: dict[str, list[str]] = {}
    for error in sorted(validator.iter_errors(expanded), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator in ("if", "allOf") or _is_own_name(error):
            continue
        if tuple(origins.locate(error.absolute_path)) in bad_values:
            continue  # reported above
        for msg in _describe(error, schema, origins.locate):
            found.setdefault(msg, [])
            entry = origins.entry_of(error.absolute_path)
            if entry and entry not in found[msg]:
                found[msg].append(entry)
    for msg, entries in found.items():
        if entries:
            shown = ", ".join(f"'{e}'" for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
            msg += f" (generated entr{'ies' if len(entries) > 1 else 'y'} {shown})"
        if msg not in problems:
            problems.append(msg)
    if problems:
        raise ConfigError(_format(problems))

    cfg = expanded
    cfg.pop("grids", None)
    _fill_defaults(cfg, schema, schema)

    if CROSS_STUDY in cfg["studies"]:
        problems.append(f"config key 'studies.{CROSS_STUDY}': the name is reserved for the cross study "
                        "(configured under `cross_study`); rename the study")
    for study, spec in cfg["studies"].items():
        where = f"studies.{study}"
        for kind in ("datasets", "models", "losses"):
            spec[kind] = _resolve_names(cfg, kind, spec[kind], where, problems)
        if spec.get("paper") is None:
            spec["paper"] = study if study in PAPERS else None
        for name, abl in spec["ablations"].items():
            at = f"{where}.ablations.{name}"
            abl.setdefault("datasets", list(spec["datasets"]))
            abl.setdefault("seeds", list(spec["seeds"]))
            for kind in ("datasets", "models", "losses"):
                abl[kind] = _resolve_names(cfg, kind, abl[kind], at, problems)
    for kind in ("datasets", "models", "losses", "studies"):
        for name in cfg[kind]:
            periodic = _PERIODIC_RE.search(name)
            if periodic:
                problems.append(f"config key '{kind}': name '{name}' ends in '{periodic.group(1)}' repeated "
                                f"{len(periodic.group(0)) // len(periodic.group(1))} times, which Snakemake refuses "
                                "in a path (it takes it for an endless recursion); rename it")
    problems += _cross_study_problems(cfg)
    problems += _results_problems(cfg)
    problems += _import_path_problems(cfg)
    if not problems:
        problems += _check_embeddings(cfg)
    for name, ds in cfg["datasets"].items():
        problems += _dataset_problems(name, ds)
    problems += _weights_problems(cfg)
    if not problems:
        problems += _train_problems(cfg)
    if problems:
        raise ConfigError(_format(problems))
    return cfg


def scale_steps(lo: float, hi: float, step: float, key: str = "train.scale_step") -> list[float]:
    """The rescale factors {lo, lo + step, ..., hi} of ``train.scale`` = [lo, hi] with
    ``train.scale_step`` = step; ConfigError naming ``key`` unless step > 0 divides hi - lo."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
        raise ConfigError(f"config key '{key}': {step!r} is not allowed; expected a number > 0, or null "
                          "for a continuous scale")
    n = (hi - lo) / step
    if n < -1e-9 or abs(n - round(n)) > 1e-6:
        raise ConfigError(f"config key '{key}': {step:g} does not divide the scale range [{lo:g}, {hi:g}] "
                          f"((max - min) / step = {n:g}, not a whole number); choose a step that reaches "
                          f"{hi:g} from {lo:g}, or null for a continuous scale")
    return [round(lo + k * step, 10) for k in range(round(n) + 1)]


def _train_problems(cfg: dict) -> list[str]:
    """What the schema cannot say about the training protocol: ``scale_step`` must divide the
    ``scale`` range it is used with, in the spec of every (dataset, model) pair of a run (the
    global ``train`` block, then the dataset's, then the model's, as segbench.plan merges
    them). The error names the block that set ``scale_step``."""
    pairs: dict[tuple[str, str], None] = {}
    for _, _, m in study_matrices(cfg):
        for d in m["datasets"]:
            for model in m["models"]:
                pairs.setdefault((d, model), None)
    cross = cfg["cross_study"]
    if cross.get("enabled", True):
        for d in cross["datasets"]:
            for model, _ in cross_methods(cfg):
                pairs.setdefault((d, model), None)
    found: dict[str, str] = {}  # one message per problem, naming the first pair that has it
    for d, model in pairs:
        blocks = [("train", cfg["train"]), (f"datasets.{d}.train", cfg["datasets"][d].get("train") or {}),
                  (f"models.{model}.train", cfg["models"][model].get("train") or {})]
        spec: dict = {}
        where = "train"
        for at, block in blocks:
            spec.update(block)
            if "scale_step" in block:
                where = at
        if spec.get("scale_step") is None:
            continue
        try:
            scale_steps(*spec["scale"], spec["scale_step"], key=f"{where}.scale_step")
        except ConfigError as e:
            found.setdefault(str(e), f"{e} (dataset '{d}' with model '{model}')")
    return list(found.values())


def _results_problems(cfg: dict) -> list[str]:
    """Normalise ``results`` in place (``results/`` -> ``results``): every rule's paths are
    built from it, and Snakemake matches output paths as written."""
    import posixpath

    folder = posixpath.normpath(cfg["results"])
    if folder in (".", "/"):
        return [f"config key 'results': {cfg['results']!r} would write the results into "
                f"{'the working directory' if folder == '.' else 'the file system root'} itself; "
                "give a folder of their own, e.g. results or results/paper"]
    cfg["results"] = folder
    return []


def _weights_problems(cfg: dict) -> list[str]:
    """Pretrained backbones: every model's ``params.pretrained`` is a registered name that
    fits the model (family, depth / variant, paper width) or a path-like string (checked to
    exist when a training needs it); ``weights.sources`` names registered checkpoints only.
    Expands ``~`` in ``weights.dir`` in place."""
    import os

    from segbench.weights import REGISTRY, check_source, config_mismatch, is_registered

    out = []
    weights = cfg["weights"]
    weights["dir"] = os.path.expanduser(weights["dir"])
    for name in weights.get("sources") or {}:
        if name not in REGISTRY:
            out.append(f"config key 'weights.sources': '{name}' is not a registered checkpoint"
                       f"{_suggest(name, list(REGISTRY))}; allowed: {', '.join(REGISTRY)}")
    for name, m in cfg["models"].items():
        source = (m.get("params") or {}).get("pretrained")
        if source is None or catalog.is_import_path(m["arch"]):  # your own model's option: yours to read
            continue
        where = f"config key 'models.{name}.params.pretrained'"
        problem = check_source(source)
        if problem is None and is_registered(source):
            problem = config_mismatch(source, m["arch"], m.get("params") or {})
        if problem:
            out.append(f"{where}: {problem}")
    return out


def _dataset_problems(name: str, ds: dict) -> list[str]:
    """What the schema cannot say about one dataset entry: keys that belong to other sources,
    and archive names in `download` that the source does not publish."""
    source, where = ds["source"], f"config key 'datasets.{name}"
    out = []
    if catalog.DATASET_SOURCES[source].folder:
        return _folder_problems(name, ds)
    if source != "synthetic" and "generate" in ds:
        out.append(f"{where}.generate': only the synthetic source generates data")
    label_sets = list(catalog.DATASET_SOURCES[source].classes)
    if ds.get("labels", label_sets[0]) not in label_sets:
        having = [s for s, d in catalog.DATASET_SOURCES.items() if ds["labels"] in d.classes]
        out.append(f"{where}.labels': '{ds['labels']}' is a label set of the {' and '.join(having)} sources; "
                   f"source '{source}' has {'one label set' if len(label_sets) == 1 else 'the label sets'}: "
                   f"{', '.join(label_sets)}")
    for key in ("trainaug", "sbd_root"):
        if key in ds and source != "voc":
            out.append(f"{where}.{key}': only the voc source has SBD / trainaug; remove it")
    dl = ds.get("download")
    if dl is None:
        return out
    if source == "synthetic":
        out.append(f"{where}.download': the synthetic source is generated, not downloaded")
        return out
    for key in ("credentials", "site"):
        if dl.get(key) and source != "cityscapes":
            out.append(f"{where}.download.{key}': only Cityscapes needs a login; remove it")
    if dl.get("urls") and source == "cityscapes":
        out.append(f"{where}.download.urls': Cityscapes archives come from its site (download.site), not URLs")
    from segbench.data.download import archives_of

    known = list(archives_of(source))
    for key in ("md5", "urls"):
        for archive in dl.get(key) or {}:
            if archive not in known:
                out.append(f"{where}.download.{key}': '{archive}' is not an archive of {source}"
                           f"{_suggest(archive, known)}; allowed: {', '.join(known)}")
    return out


def _folder_problems(name: str, ds: dict) -> list[str]:
    """A dataset of the folder source: ``root`` names the folder, which has a readable class
    list and, per split, a manifest's rows or images/ + labels/ folders (every file is
    checked when the dataset is prepared). The other sources' keys are refused."""
    from segbench.data import DataError
    from segbench.data.folder import count_split, read_class_list

    where = f"config key 'datasets.{name}"
    out = [f"{where}.{key}': the folder source reads its folder (`root`) only; remove `{key}`"
           for key in ("generate", "download", "trainaug", "sbd_root", "allow_partial") if key in ds]
    if ds.get("labels", "trainId") != "trainId":
        out.append(f"{where}.labels': the folder source has one label set, its class list (trainId); remove `labels`")
    if not ds.get("root"):
        return out + [f"{where}.root': the folder source needs `root`: the folder holding images/, labels/ (or "
                      "manifest.csv) and classes.csv (docs/extending.md)"]
    try:
        read_class_list(ds["root"])
        for split in ("train", "val"):
            count_split(ds["root"], split)
    except DataError as e:
        out.append(f"{where}.root': {e}")
    return out


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return f"single string ({value[:40]!r})"
    return f"single value ({value!r:.40})"


def _format(problems: list[str]) -> str:
    head = f"invalid configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
    return "\n".join([head, *("  - " + p for p in problems)])


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last).

    YAML 1.1 merge keys (``<<: *base``) are accepted as Snakemake's loader accepts them: the
    mapping's own keys override the merged ones, so only its own keys are checked for
    repeats (SafeLoader's ``construct_mapping`` then merges, as usual)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the schema check reports it
                continue
            if first is not None:
                raise ConfigError(f"duplicate key {key!r} on line {key_node.start_mark.line + 1} (first on line "
                                  f"{first}): YAML would keep only the last; remove or rename one of them")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file, refusing duplicate keys; errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file; give the path of a YAML file "
                          f"(e.g. {path / 'config.yaml'})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e.strerror}; check the path and its "
                          "permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line} cannot be "
                          "decoded); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        place = str(e).replace('"<unicode string>"', str(path))
        hint = "indent with spaces: YAML does not allow tabs" if "'\\t'" in place else \
            "fix the file at the line and column shown"
        raise ConfigError(f"{path}: not valid YAML: {place}\n{hint}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw = read_yaml(path)
    try:
        return validate_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
