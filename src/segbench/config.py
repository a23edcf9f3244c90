"""Load and validate the benchmark configuration.

The JSON schema in ``workflow/schemas/config.schema.yaml`` is the single description of
every key. :func:`validate_config` checks a config mapping against it, reports *every*
problem with the key's dotted path and the allowed values, fills in the schema's defaults,
and then checks what a schema cannot: that every name a study uses is defined.

No torch or mlflow here: the Snakefile imports this module at start-up.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem found."""


def load_schema(path: str | Path | None = None) -> dict:
    path = Path(path) if path else SCHEMA_PATH
    if not path.exists():
        raise ConfigError(f"config schema not found at {path}")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(error, schema_root: dict) -> list[str]:
    """Turn a jsonschema error into messages naming the key path and the allowed values."""
    from jsonschema.exceptions import ValidationError  # noqa: F401  (type only)

    if error.context and error.validator in ("oneOf", "anyOf"):
        # e.g. eval_size: a size or null; report the most specific alternative
        best = sorted(error.context, key=lambda e: -len(e.path))[0]
        return _describe(best, schema_root)
    where = _key_path(error.absolute_path)
    v, schema = error.validator, error.schema
    if v == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in schema.get("properties", {})]
        return [
            f"config key '{where}': unknown key '{k}'{_suggest(k, allowed)}; "
            f"allowed keys: {', '.join(allowed) or '(none)'}"
            for k in extra
        ]
    if v == "enum":
        return [
            f"config key '{where}': {error.instance!r} is not allowed{_suggest(error.instance, schema['enum'])}; "
            f"allowed values: {', '.join(map(str, schema['enum']))}"
        ]
    if v == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"config key '{where}': missing required key '{k}'" for k in missing]
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return [f"config key '{where}': expected {want}, got {error.instance!r}"]
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


def validate_config(config: dict, schema_path: str | Path | None = None) -> dict:
    """Return a validated copy of ``config`` with defaults filled; raise ConfigError."""
    from jsonschema import Draft202012Validator

    if not isinstance(config, dict) or not config:
        raise ConfigError("the configuration is empty: give a config.yaml (see the README)")
    schema = load_schema(schema_path)
    validator = Draft202012Validator(schema)
    problems: list[str] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator in ("if", "allOf"):
            continue
        for msg in _describe(error, schema):
            if msg not in problems:
                problems.append(msg)
    if problems:
        raise ConfigError(_format(problems))

    cfg = copy.deepcopy(config)
    _fill_defaults(cfg, schema, schema)

    for study, spec in cfg["studies"].items():
        for kind in ("datasets", "models", "losses"):
            defined = list(cfg[kind])
            for i, name in enumerate(spec[kind]):
                if name not in cfg[kind]:
                    problems.append(
                        f"config key 'studies.{study}.{kind}[{i}]': '{name}' is not defined under "
                        f"'{kind}'{_suggest(name, defined)}; allowed values: {', '.join(defined)}"
                    )
    for name, ds in cfg["datasets"].items():
        if ds["source"] != "synthetic" and not ds.get("root"):
            problems.append(
                f"config key 'datasets.{name}.root': source '{ds['source']}' needs `root:` pointing "
                "at an existing copy of the dataset"
            )
        if ds["source"] != "synthetic" and "generate" in ds:
            problems.append(f"config key 'datasets.{name}.generate': only the synthetic source generates data")
    if problems:
        raise ConfigError(_format(problems))
    return cfg


def _format(problems: list[str]) -> str:
    head = f"invalid configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
    return "\n".join([head, *("  - " + p for p in problems)])


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return validate_config(raw or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
