"""reTurnServer.config (or a YAML mapping) -> a frozen, validated Config.

The grammar follows reTurn (docs/compatibility.md); the key table and value conversion live in pyturn.config.

Deliberate differences from reTurn, kept small:
* A relative ``include`` is looked up beside the including file first, then relative to the current
  directory (reTurn only tries the current directory).
* Bare file names are resolved against the folder of the file that set them (reTurn uses the folder of the
  last include that had a slash, which only differs for configs that use include).
* Unusable ports, lifetimes and addresses are errors instead of silent zeros or truncations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Sequence
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # types-PyYAML is a dev extra

from pyturn.config import (
    COMMAND_LINE,
    KEYS,
    MAX_INCLUDE_DEPTH,
    OBSOLETE_KEYS,
    Config,
    ConfigWarning,
    Converter,
    Kind,
    Setting,
)
from pyturn.errors import ConfigError
from pyturn.files.noncesecret import NonceSecretError, load_nonce_secret


def _name_end(line: str) -> int:
    """The name runs up to the first '=', space or tab (docs/compatibility.md "Grammar")."""
    for index, char in enumerate(line):
        if char in "= \t":
            return index
    return len(line)


def _parse_text(path: str, data: bytes, warnings: list[ConfigWarning]) -> list[Setting]:
    """docs/compatibility.md "Grammar": one `Name = Value` per line; `#` only comments at the start of a line."""
    entries = []
    base_dir = os.path.dirname(path)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("line is not valid UTF-8", path, number) from exc
        line = line.removesuffix("\r").lstrip(" \t")
        if not line.strip() or line.startswith("#"):
            continue
        name_end = _name_end(line)
        name, rest = line[:name_end], line[name_end:]
        equals = rest.find("=")
        if equals < 0:
            raise ConfigError(f"expected 'Name = Value', got {line.rstrip()!r}", path, number)
        if not name:
            raise ConfigError("missing key name before '='", path, number)
        between = rest[:equals].strip(" \t")
        if between:
            warnings.append(ConfigWarning(path, number, f"text {between!r} between {name} and '=' ignored"))
        entries.append(Setting(name, rest[equals + 1:].lstrip(" \t"), path, number, base_dir))
    return entries


def _parse_yaml(path: str, data: bytes) -> list[Setting]:
    """A top-level mapping of reTurn key names; line numbers come from the composed node tree."""
    try:
        root = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not valid UTF-8", path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", path, mark.line + 1 if mark else None) from exc
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("a YAML config must be a mapping of reTurn key names to values", path,
                          root.start_mark.line + 1)
    entries = []
    base_dir = os.path.dirname(path)
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError("a key must be a plain name", path, line)
        name = str(key_node.value)
        entries.append(Setting(name, _yaml_value_text(name, value_node, path, line), path, line, base_dir))
    return entries


def _yaml_value_text(name: str, node: yaml.Node, path: str, line: int) -> str:
    """The value as the text a .config line would carry, so both formats share one validation."""
    spec = KEYS.get(name.lower())
    if isinstance(node, yaml.SequenceNode):
        if spec is None or spec.kind not in (Kind.NETWORKS, Kind.SECRETS, Kind.ENDPOINTS):
            raise ConfigError(f"{name}: a list is only allowed for the peer address keys", path, line)
        items = [_yaml_value_text(name, item, path, item.start_mark.line + 1) for item in node.value]
        return ", ".join(items)
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{name}: expected a single value, got a mapping", path, line)
    text = str(node.value)
    if node.tag == "tag:yaml.org,2002:null":
        return ""
    if node.tag == "tag:yaml.org,2002:bool" and spec is not None and spec.kind is Kind.BOOL:
        return "true" if yaml.SafeLoader.bool_values[text.lower()] else "false"
    return text


def _read_file(path: str, settings: dict[str, Setting], warnings: list[ConfigWarning],
               reading: tuple[str, ...]) -> None:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path) from exc
    is_yaml = path.lower().endswith((".yaml", ".yml"))
    entries = _parse_yaml(path, data) if is_yaml else _parse_text(path, data, warnings)
    for entry in entries:
        if entry.name.lower() == "include":
            included = _find_include(entry)
            real = os.path.realpath(included)
            if real in reading:
                raise ConfigError(f"include: {entry.value.strip()!r} is already being read (include loop)",
                                  entry.path, entry.line)
            if len(reading) >= MAX_INCLUDE_DEPTH:
                raise ConfigError(f"include: nested more than {MAX_INCLUDE_DEPTH} deep",
                                  entry.path, entry.line)
            _read_file(included, settings, warnings, (*reading, real))
            continue
        _add_setting(settings, entry)


def _find_include(entry: Setting) -> str:
    """Beside the including file first, then relative to the current directory (reTurn's only place)."""
    target = entry.value.strip()
    if not target:
        raise ConfigError("include: empty file name", entry.path, entry.line)
    if os.path.isabs(target):
        candidates = [target]
    else:
        candidates = [os.path.join(entry.base_dir, target), target] if entry.base_dir else [target]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"include: cannot find {target!r} (looked in: {', '.join(dict.fromkeys(candidates))})",
                      entry.path, entry.line)


def _add_setting(settings: dict[str, Setting], entry: Setting) -> None:
    key = entry.name.lower()
    first = settings.get(key)
    if first is not None:
        raise ConfigError(f"duplicate key {entry.name!r} (first set at {first.path}:{first.line})",
                          entry.path, entry.line)
    settings[key] = entry


def _override_entries(args: Sequence[str], base_dir: str) -> list[Setting]:
    """docs/compatibility.md "Command line": `-Name=Value`, `--Name:Value`, `/Name=Value`; a repeated name is fatal."""
    entries: list[Setting] = []
    seen: dict[str, int] = {}
    for index, arg in enumerate(args, start=1):
        if not arg.startswith(("-", "/")):
            raise ConfigError(f"expected --Name=Value, got {arg!r}", COMMAND_LINE, index)
        body = arg.lstrip("-/")
        separator = re.search(r"[=:]", body)
        if separator is None:
            raise ConfigError(f"expected --Name=Value, got {arg!r}", COMMAND_LINE, index)
        name = body[:separator.start()]
        if not name:
            raise ConfigError(f"missing key name in {arg!r}", COMMAND_LINE, index)
        key = name.lower()
        if key in seen:
            raise ConfigError(f"duplicate key {name!r} (also argument {seen[key]})", COMMAND_LINE, index)
        seen[key] = index
        entries.append(Setting(name, body[separator.end():], COMMAND_LINE, index, base_dir))
    return entries


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`--Key=Value` arguments -> {lower-cased key: value}; ConfigError for a malformed or repeated one."""
    return {entry.name.lower(): entry.value for entry in _override_entries(args, "")}


def _resolve_bare_name(name: str, base_dir: str) -> str:
    """docs/compatibility.md "File names": a name without any slash lives beside the config file; others stay as
    given."""
    if not name or "/" in name or not base_dir:
        return name
    return os.path.join(base_dir, name)


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                defaults: Config | None = None) -> tuple[Config, list[ConfigWarning]]:
    """Read a reTurnServer.config (or a YAML mapping when the file ends with .yaml/.yml), apply `--Key=Value`
    command-line overrides (reTurn grammar: leading -,/ stripped, name ends at '=' or ':'), validate.
    Raises ConfigError (message, path, line) for anything unusable. Returns the frozen Config and the
    warnings to log. Override errors and warnings carry path "<command line>" and the 1-based argument
    index as their line.
    """
    config_path = os.fspath(path)
    base = defaults if defaults is not None else Config()
    warnings: list[ConfigWarning] = []
    settings: dict[str, Setting] = {}
    _read_file(config_path, settings, warnings, (os.path.realpath(config_path),))
    config_dir = os.path.dirname(config_path)
    for entry in _override_entries(overrides, config_dir):
        # docs/compatibility.md "Command line": the command line replaces the file's value
        settings[entry.name.lower()] = entry

    converter = Converter(warnings)
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(Config)}
    applied_from: dict[str, Setting] = {}
    for key, entry in settings.items():
        spec = KEYS.get(key)
        if spec is None:
            if key == "include":  # only reachable from the command line
                converter.warn(entry, "include is only read from config files; ignored")
            elif key in OBSOLETE_KEYS:
                converter.warn(entry, f"obsolete key {entry.name!r} ignored; "
                                      "users come from UserDatabaseFile")
            else:
                converter.warn(entry, f"unknown key {entry.name!r} ignored")
            continue
        if spec.fallback_for is not None:
            primary = settings.get(spec.fallback_for)
            if primary is not None and primary.value.strip():
                continue
        if spec.empty_means_default and not entry.value.strip():
            continue  # reTurn's logging keys: empty means "not set"
        values[spec.field] = converter.convert(spec, entry, values[spec.field])
        applied_from[spec.field] = entry

    for spec in KEYS.values():
        if spec.kind is Kind.PATH and isinstance(values[spec.field], str):
            entry_or_none = applied_from.get(spec.field)
            folder = entry_or_none.base_dir if entry_or_none is not None else config_dir
            values[spec.field] = _resolve_bare_name(values[spec.field], folder)

    _validate(values, applied_from, config_path, warnings)
    return Config(**values), warnings


def _validate(values: dict[str, Any], applied_from: dict[str, Setting], config_path: str,
              warnings: list[ConfigWarning]) -> None:
    def where(*fields: str) -> tuple[str, int | None]:
        for name in fields:
            entry = applied_from.get(name)
            if entry is not None:
                return entry.path, entry.line
        return config_path, None

    user_file = values["user_database_file"]
    secret_file = values["auth_shared_secret_file"]
    if not user_file and not (values["auth_shared_secret"] or secret_file):
        raise ConfigError("Missing user database option (UserDatabaseFile)", *where("user_database_file"))
    if user_file and (not os.path.isfile(user_file) or not os.access(user_file, os.R_OK)):
        raise ConfigError(f"UserDatabaseFile: cannot read {user_file!r}", *where("user_database_file"))
    if secret_file and (not os.path.isfile(secret_file) or not os.access(secret_file, os.R_OK)):
        raise ConfigError(f"AuthSharedSecretFile: cannot read {secret_file!r}", *where("auth_shared_secret_file"))
    nonce_file = values["nonce_secret_file"]
    if nonce_file:
        try:
            load_nonce_secret(nonce_file)
        except NonceSecretError as error:
            if error.line is None:
                raise ConfigError(f"NonceSecretFile: {error.message}", *where("nonce_secret_file")) from None
            raise ConfigError(f"NonceSecretFile: {error.message}", nonce_file, error.line) from None
    if any(char in values["auth_shared_secret_separator"] for char in "0123456789"):
        raise ConfigError("AuthSharedSecretSeparator: a digit cannot end the EXPIRY",
                          *where("auth_shared_secret_separator"))

    try:
        values["metrics_address"] = str(ipaddress.ip_address(values["metrics_address"].strip()))
    except ValueError:
        raise ConfigError(f"MetricsAddress: {values['metrics_address']!r} is not an IPv4 or IPv6 address",
                          *where("metrics_address")) from None

    low, high = values["allocation_port_range_min"], values["allocation_port_range_max"]
    if low > high:
        raise ConfigError(f"AllocationPortRangeMin {low} is greater than AllocationPortRangeMax {high}",
                          *where("allocation_port_range_min", "allocation_port_range_max"))

    default_lifetime, max_lifetime = values["default_allocation_lifetime"], values["max_allocation_lifetime"]
    if default_lifetime > max_lifetime:
        path, line = where("default_allocation_lifetime", "max_allocation_lifetime")
        warnings.append(ConfigWarning(path, line or 0, (
            f"DefaultAllocationLifetime {default_lifetime} is greater than "
            f"MaxAllocationLifetime {max_lifetime}: "
            "like reTurn, small requests get the default and large ones the maximum")))
