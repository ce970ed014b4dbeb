"""Compose and validate a command's config before Hydra runs it, so every config mistake is one line.

`sposd train` / `sposd eval` compose their config once here (Hydra's compose API, the same search path and
overrides as the app), validate it against the schemas, and only then hand over to `@hydra.main`, which writes
the run directory. Hydra's own errors (a misspelled key, an unknown option, an unparsable override) are turned
into one line with the same exit code as sposd's, and the suggestion is never to add `+`: a key the schema does
not have would be accepted and do nothing. For the same reason a `+key=...` that adds a key to a schema-typed
node is refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any

# Hydra flags after which nothing is run (help, printing the config, shell completion): left to Hydra.
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
               "--resolve", "-p", "--package")  # fmt: skip
MULTIRUN_FLAGS = ("-m", "--multirun")


class ConfigError(ValueError):
    """A config mistake, already phrased as one line."""


def wants_info(argv: list[str]) -> bool:
    """Whether Hydra is asked to print something rather than run (`--help`, `--cfg job`, ...)."""
    return any(a in _INFO_FLAGS or a.startswith(("--config-dir", "--config-name", "-cd", "-cn")) for a in argv)


def first_point(argv: list[str]) -> list[str]:
    """The overrides of a command line without Hydra flags; a sweep (`seed=0,1,2`) becomes its first value, so the
    first point of a multirun can be validated before any job starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    out = []
    parser = OverridesParser.create()
    for o in overrides:
        try:
            (parsed,) = parser.parse_overrides([o])
        except Exception:  # Hydra reports it when composing
            out.append(o)
            continue
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()), None)
            out.append(o if first is None else f"{parsed.get_key_element()}={first}")
        else:
            out.append(o)
    return out


def compose_checked(config_dir: str, config_name: str, overrides: list[str]):
    """Compose `config_name` with `overrides` and validate it; returns (the app config object, the hydra node).

    Raises:
        ConfigError: one line naming the key or override and what would be valid.
    """
    from hydra import compose, initialize_config_dir, initialize_config_module
    from omegaconf import OmegaConf

    from sposd.config import to_object

    init = (
        initialize_config_module(config_module=config_dir.removeprefix("pkg://"), version_base="1.3")
        if config_dir.startswith("pkg://")
        else initialize_config_dir(config_dir=config_dir, version_base="1.3")
    )
    try:
        with init:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception as e:  # Hydra and OmegaConf raise many types; each becomes one line
        raise ConfigError(hydra_error_line(e, config_dir)) from None
    hydra_node = cfg.hydra
    with _open(cfg):
        del cfg["hydra"]
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(unknown_key_line(*unknown[0]))
    try:
        app = to_object(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        run_dir = OmegaConf.select(hydra_node, "run.dir")
    except Exception as e:
        raise ConfigError(hydra_error_line(e)) from None
    return app, run_dir


def _open(cfg):
    from omegaconf import open_dict

    return open_dict(cfg)


def unknown_keys(cfg, prefix: str = "") -> list[tuple[str, type]]:
    """(full key, schema) of every key a schema-typed node holds but its dataclass does not declare (added by `+`)."""
    from omegaconf import DictConfig, OmegaConf

    found = []
    schema = OmegaConf.get_type(cfg)
    names = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if names is not None and key not in names:
            found.append((full, schema))
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            found += unknown_keys(child, prefix=f"{full}.")
    return found


def unknown_key_line(full_key: str, schema: type) -> str:
    parent, _, leaf = full_key.rpartition(".")
    fields = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(leaf, fields, n=1, cutoff=0.6)
    where = f"{parent} ({schema.__name__})" if parent else f"the top level ({schema.__name__})"
    if close:
        return f"{full_key} is not a key of {where}; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"{full_key} is not a key of {where}; valid keys: {', '.join(fields)}"


_MISSING_OPTION = re.compile(r"Could not (?:find|load) '([^']+)/([^']+)'")


def hydra_error_line(e: BaseException, config_dir: str | None = None) -> str:
    """One line for a Hydra / OmegaConf composition error, without Hydra's advice to add `+`."""
    msg = str(e)
    m = _MISSING_OPTION.search(msg)
    if m:
        group, option = m.groups()
        return f"{group}={option} is not an option of {group}; choose from {_group_options(msg, group, config_dir)}"
    cause: Any = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    text = str(cause).splitlines()[0] if str(cause).strip() else msg.splitlines()[0]
    if key and text.startswith("Key ") and " not in " in text and dataclasses.is_dataclass(schema):
        return unknown_key_line(key, schema)
    if key and text.startswith("Key ") and "not in struct" in text:  # a dict whose keys are fixed by its YAML
        parent = getattr(cause, "parent_node", None)
        keys = [str(k) for k in parent.keys()] if parent is not None else []
        valid = f"; valid keys: {', '.join(keys)}" if keys else " (the selected option takes none)"
        return f"{key} is not a key of {key.rpartition('.')[0] or 'the top level'}{valid}"
    if "mandatory value" in text.lower() and key:
        return f"{key}: a required value is missing ({text})"
    line = f"{key}: {text}" if key and key not in text else text
    if type(e).__name__ == "OverrideParseException" or "parsing override" in msg.lower():
        line = f"cannot parse an override ({line}); the syntax is key=value, group=option or key=[a,b]"
    return line


def _group_options(msg: str, group: str, config_dir: str | None) -> list[str]:
    """The options Hydra listed in its message (base_* schemas left out), or the group's YAML files."""
    listed = re.findall(r"^\t(\S+)$", msg.split("Config search path")[0], flags=re.M)
    if listed:
        return [o for o in listed if not o.startswith("base_")]
    from pathlib import Path

    folder = Path(config_dir or "") / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if config_dir and folder.is_dir() else []
