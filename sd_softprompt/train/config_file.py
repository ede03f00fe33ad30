"""Training configs as TOML files: `train --config run.toml`, and the resolved config written beside the output.

A config file is flat, one ``key = value`` line per flag: its keys are `train`'s flag names without the dashes
(``batch-size`` or ``batch_size``; ``--no-flip`` is ``no-flip = true``), its values TOML's own types (numbers
unquoted, lists for flags that take several values). Flags given on the command line replace the file's
values. Reading is TOML's standard library parser (tomllib; tomli before Python 3.11); writing the flat config
needs only strings, numbers, booleans and lists, so a small writer of our own does it (`dumps`).
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, shorten
from .config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, as a package
    import tomli as tomllib

NOT_WRITTEN = ("progress",)  # how the run shows itself, not what it computes


def _keys() -> dict[str, tuple[str, bool]]:
    """TOML key (the flag's name without dashes, underscores as dashes) -> (TrainConfig field, negated)."""
    out = {}
    for f in fields(TrainConfig):
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        out[flag.lstrip("-")] = (f.name, f.metadata["argparse"].get("action") == "store_false")
    return out


KEYS = _keys()


def key_of(name: str) -> str:
    """The TOML key of a TrainConfig field."""
    return next(key for key, (field, _) in KEYS.items() if field == name)


def read_config(path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a config file sets, checked against each flag's type; ConfigError naming the file
    and the key for anything else (an unknown key, a value of the wrong type, a file that is not TOML)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; --config takes a TOML file of key = value lines") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e}); --config takes a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); write one key = value line per flag") from None
    out: dict[str, Any] = {}
    by_field = {f.name: f for f in fields(TrainConfig)}
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: [{shorten(key, 40)}] is a table; the config is flat: one key = value line per flag"
            )
        normal = key.replace("_", "-")
        if normal not in KEYS:
            close = difflib.get_close_matches(normal, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"{path}: unknown key {shorten(key, 40)!r}{hint}; the keys are train's flag names, "
                f"see sd-softprompt train --help"
            )
        name, negated = KEYS[normal]
        if name in out:
            raise ConfigError(f"{path}: {key} is given twice (dashes and underscores name the same key)")
        value = _checked(path, key, value, by_field[name].metadata["argparse"])
        out[name] = (not value) if negated else value
    return out


def _checked(path: Path, key: str, value: Any, options: dict) -> Any:
    """`value` as the flag's own argparse options would have it, or ConfigError naming the file and the key."""
    action, kind = options.get("action"), options.get("type", str)
    shown = shorten(repr(value), 40)
    if action in ("store_true", "store_false"):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {key} = {shown}: must be true or false")
        return value
    if action == "append" or options.get("nargs") in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_scalar(path, key, item, kind, options.get("choices")) for item in items]
    return _scalar(path, key, value, kind, options.get("choices"))


def _scalar(path: Path, key: str, value: Any, kind: type, choices) -> Any:
    shown = shorten(repr(value), 40)
    if kind not in (int, float, str):  # the flag's own parser (--vectors: a whole number or auto)
        try:
            return kind(value)
        except ValueError as e:
            raise ConfigError(f"{path}: {key} = {shown}: {e}") from None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: {key} = {shown}: must be a whole number (written without quotes)")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: {key} = {shown}: must be a number (written without quotes)")
        value = float(value)
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{path}: {key} = {shown}: must be a string (in double quotes)")
    if choices and value not in choices:
        raise ConfigError(f"{path}: {key} = {shown}: must be one of {', '.join(map(str, choices))}")
    return value


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a config file, `overrides` (field names) replacing its values, the rest defaults."""
    values = read_config(path) | overrides
    missing = [key_of(f.name) for f in fields(TrainConfig) if f.name not in values and _required(f)]
    if missing:
        raise ConfigError(f'{path}: {" and ".join(missing)} missing; add {missing[0]} = "..." or pass it as a flag')
    return TrainConfig(**values)


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def config_values(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a config file's keys and values (what `config_toml` writes)."""
    out = {}
    for f in fields(TrainConfig):
        if f.name in NOT_WRITTEN:
            continue
        key = key_of(f.name)
        value = getattr(cfg, f.name)
        out[key] = (not value) if KEYS[key][1] else value
    return out


def config_toml(cfg: TrainConfig) -> str:
    """The resolved config as a config file: `train --config` on it repeats the run."""
    head = "# sd-softprompt train --config this-file: the run's settings, every one (unset ones are left out)\n"
    return head + dumps(config_values(cfg))


# ---------------------------------------------------------------------------------------- the writer
def dumps(values: dict[str, Any]) -> str:
    """A flat TOML document: strings, whole and real numbers, booleans and lists of them; None is left out
    (TOML has no null, and every field that can be None is None by default)."""
    lines = [f"{_key(key)} = {_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    bare = key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key)
    return key if bare else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # the shortest text that reads back as the same float; TOML takes 1e-05 too
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value if item is not None) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to a flat TOML config")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, control characters as escapes."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
