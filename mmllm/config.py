"""Typed configs: dataclasses per component, YAML files, dotted command-line overrides.

Each component declares its config with `@config_dataclass` (a pydantic dataclass that
forbids unknown keys), next to the code that uses it. Loading is always the same:

    cfg = load_config(SynthConfig, "configs/synth/small.yaml", ["asr.train=100"])

An unknown key, a value of the wrong type or a missing required value raises
`ConfigError` naming the key and the file (or the command-line override it came from).
`save_config` writes the resolved config beside every artifact, and `config_hash` keys
caches so that a cache built for another config is never silently reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from mmllm.fileio import atomic_write_text

T = TypeVar("T")
CONFIG_FILENAME = "config.yaml"


class ConfigError(ValueError):
    """A config file or override that does not match its dataclass."""


def config_dataclass(cls: type[T]) -> type[T]:
    """Declare a config: a dataclass validated on construction, unknown keys rejected."""
    return _pydantic_dataclass(cls, config=ConfigDict(extra="forbid"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _section_type(cls: type | None, parts: Sequence[str]) -> type | None:
    """The config dataclass at dotted `parts` below `cls` (None: not a section, or unknown)."""
    for part in parts:
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        candidates = [hints[part], *typing.get_args(hints[part])]  # X, or X | None
        cls = next((c for c in candidates if dataclasses.is_dataclass(c)), None)
    return cls


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], cls: type | None = None
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place.

    A mapping given to a config section of `cls` (`train={steps: 3}`) is merged into it key
    by key, as the dotted keys would be; any other value (a plain dict field such as
    `data.mixture`, a list, a scalar) replaces what was there."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(parts):
            raise ConfigError(f"command-line override {item!r}: expected key=value (dotted key)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            problem = str(err).replace("\n", " ")
            raise ConfigError(
                f"command-line override {item!r}: invalid YAML value: {problem}"
            ) from None
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"command-line override {item!r}: key {part!r} is not a section")
            node = child
        current = node.get(parts[-1])
        if isinstance(value, dict) and isinstance(current, dict) and _section_type(cls, parts):
            apply_overrides(current, [f"{k}={yaml.safe_dump(v).strip()}" for k, v in value.items()])
        else:
            node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from an optional YAML file plus dotted overrides, validating every key."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides, cls)
    return from_dict(
        cls, data, source=str(path) if path is not None else "<defaults>", overrides=overrides
    )


def from_dict(
    cls: type[T], data: dict[str, Any], source: str = "<dict>", overrides: Sequence[str] = ()
) -> T:
    """Validate a nested dict into `cls`; errors name each bad key and where it came from."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as err:
        override_keys = {item.partition("=")[0]: item for item in overrides}
        lines = []
        for problem in err.errors():
            key = ".".join(str(part) for part in problem["loc"])
            origin = next(
                (
                    f"command-line override {item!r}"
                    for k, item in override_keys.items()
                    if key == k or key.startswith(k + ".")
                ),
                source,
            )
            where = f"key '{key}': " if key else ""
            lines.append(f"{origin}: {where}{_describe(problem)}")
        raise ConfigError(
            "invalid config for " + cls.__name__ + ":\n  " + "\n  ".join(lines)
        ) from None


def _describe(problem: dict[str, Any]) -> str:
    kind = problem["type"]
    if kind == "missing":
        return "missing required value"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    if kind == "value_error":  # raised by a config's __post_init__, which names its keys itself
        return problem["msg"].removeprefix("Value error, ")
    return f"{problem['msg']} (got {problem.get('input')!r})"


# Field metadata of an optional section (`x: Section | None = dataclasses.field(default=None,
# metadata=OMIT_WHEN_NONE)`): left out of config_to_dict while None, so adding such a section
# to a config keeps the hash and the saved form of every config written before it existed.
OMIT_WHEN_NONE = {"omit_when_none": True}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what config_hash hashes and save_config writes); fields
    declared with OMIT_WHEN_NONE are left out while None."""
    values = dataclasses.asdict(cfg)
    _omit_unset_sections(cfg, values)
    return values


def _omit_unset_sections(cfg: Any, values: dict[str, Any]) -> None:
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if value is None and field.metadata.get("omit_when_none"):
            del values[field.name]
        elif dataclasses.is_dataclass(value):
            _omit_unset_sections(value, values[field.name])


def config_hash(cfg: Any) -> str:
    """Stable 16-hex-digit hash of a config's resolved values."""
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_config(cfg: Any, directory: str | Path, filename: str = CONFIG_FILENAME) -> Path:
    """Write the resolved config as YAML beside an artifact (atomically)."""
    path = Path(directory) / filename
    header = f"# resolved {type(cfg).__name__} (hash {config_hash(cfg)})\n"
    atomic_write_text(path, header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every mmllm command's --help: each option's default shown (unless it is unset or its
    help already says it), descriptions and epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if "default" in text or unset or action.default == argparse.SUPPRESS:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text.strip()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count, a size, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def comma_list(choices: Sequence[str]):
    """argparse type: comma-separated names, each one of `choices`, at least one."""

    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                f"expected some of {','.join(choices)}"
            )
        return names

    return parse


def command_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of `mmllm NAME` (and of the script that runs the same command)."""
    return argparse.ArgumentParser(
        prog=f"mmllm {name}", description=description, formatter_class=HelpFormatter
    )


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type | None = None,
    *,
    aliases: Sequence[str] = (),
    required: bool = False,
    help: str = "YAML config file",
) -> None:
    """The shared CLI shape: `--config FILE` then any number of `dotted.key=value` overrides.

    With `cls` (a config dataclass whose fields all have defaults), --help ends with its
    defaults as YAML: what a run uses for every key neither the file nor an override sets."""
    parser.add_argument("--config", *aliases, type=Path, default=None, required=required, help=help)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides, e.g. train.lr=3e-4"
    )
    parser.formatter_class = HelpFormatter
    try:
        defaults = yaml.safe_dump(config_to_dict(cls()), sort_keys=False).rstrip() if cls else None
    except (TypeError, ValueError):  # a config with required fields has no defaults to show
        defaults = None
    if defaults is not None:
        indented = "\n".join("  " + line for line in defaults.splitlines())
        parser.epilog = (
            f"defaults ({cls.__name__}; --config and KEY=VALUE override them):\n{indented}"
        )
