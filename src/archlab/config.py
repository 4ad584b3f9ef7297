"""Strict dataclass configs: unknown keys and wrong types are errors that name the key.

Every config in archlab (model, data, training) is a dataclass. ``from_dict`` builds one from
plain data (parsed YAML/JSON), recursing into nested dataclass fields, and refuses anything it
does not know, naming the section, the key and the closest valid key. ``load_yaml`` reads that
plain data from a file with limits, so no file can hang a run, exhaust memory or overflow the stack.
Every message shows values through ``brief_repr``: one short line, however big the value.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

from .errors import ConfigError

T = TypeVar("T")


# ----------------------------------------------------------------------------- bounded messages

class _BriefRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 60, 60, 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 5
        self.maxdict = 4

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # repr itself refuses ints of more than 4300 digits
            return f"<{x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_BRIEF = _BriefRepr()


def brief_repr(value: Any, limit: int = 80) -> str:
    """repr for error messages: at most ``limit`` characters, never walking a huge or deep value whole."""
    try:
        text = _BRIEF.repr(value)
    except Exception:  # a user object whose __repr__ fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


# ----------------------------------------------------------------------------- YAML with limits

MAX_YAML_BYTES = 1 << 20  # a config is a few kB; 1 MiB also bounds the pure-Python parser's time
MAX_YAML_DEPTH = 64  # far beyond any config, far below Python's recursion limit
MAX_YAML_ALIASES = 100  # uses of *name
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add to a document beyond those written out


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses documents that are small but costly. Aliases are shared, not
    copied, so the ~400-byte "billion laughs" loads quickly, then takes forever (and all memory) in
    whatever walks it; so each node's expanded size and depth are counted as it is composed."""

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.depth = self.aliases = self.written = 0
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes it expands to, levels), once complete

    def _refuse(self, why: str, mark: Any) -> typing.NoReturn:
        raise ConfigError(f"{self.where}:{mark.line + 1}: {why}")

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                self._refuse(f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out", mark)
            node = super().compose_node(parent, index)
            if id(node) not in self.sizes:
                self._refuse("an alias inside the node it names (recursive data)", mark)
            return node
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            self._refuse(f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        node = super().compose_node(parent, index)
        self.depth -= 1
        self.written += 1
        if isinstance(node, ScalarNode):
            children = []
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value
        sizes = [self.sizes[id(c)] for c in children]
        size, levels = 1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes), default=0)
        if levels > MAX_YAML_DEPTH:
            self._refuse(f"aliases nest the data deeper than {MAX_YAML_DEPTH} levels", mark)
        if size > self.written + MAX_ALIAS_NODES:
            self._refuse(f"aliases expand the data by more than {MAX_ALIAS_NODES} values", mark)
        self.sizes[id(node)] = (size, levels)
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, ConfigError):
            raise
        except Exception as e:  # the safe constructors raise ValueError, AttributeError... on `!!int abc`
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(None, None, f"{brief_repr(node.value)} is not a valid {kind} "
                                               f"({_clip(str(e), 60)})", node.start_mark) from None


def _yaml_problem(e: yaml.YAMLError, text: str, where: str) -> str:
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, e.position) + 1
        return f"{where}:{line}: not valid YAML: character #x{e.character:04x} is not allowed in YAML"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    at = f":{mark.line + 1}" if mark is not None else ""
    what = "; ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
    return f"{where}{at}: not valid YAML: {_clip(what or str(e), 200)}"


def _safe_load(text: str, where: str) -> Any:
    """yaml.safe_load within the limits above; a limit raises ConfigError, bad syntax yaml.YAMLError."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: more than {MAX_YAML_BYTES} characters of YAML; a config is a few kB")
    loader = _LimitedLoader(text, where)
    try:
        return loader.get_single_data()
    except RecursionError:  # the limits should make this unreachable; never a traceback all the same
        raise ConfigError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def loads_yaml(text: str, where: str = "<string>") -> Any:
    """YAML ``text`` as plain data, like yaml.safe_load, but bounded in size, depth and alias
    expansion; every failure is a ConfigError naming ``where`` (and the line when known)."""
    try:
        return _safe_load(text, where)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(e, text, where)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path``, read with ``loads_yaml``'s limits; anything else
    (missing, unreadable, a directory, over 1 MiB, not UTF-8, not a mapping) is a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # never more, whatever the file (or device) is
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB; a config is a few kB "
                          f"(is this the right file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#04x}: {e.reason}); "
                          f"save the file as UTF-8") from None
    data = loads_yaml(text, str(path))
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}: {brief_repr(data)}"
        raise ConfigError(f"{path}: expected a mapping (key: value lines) at the top level, got {got}")
    return data


# ----------------------------------------------------------------------------- dataclasses from plain data

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(map(repr, allowed))
            raise ConfigError(f"{where}: {brief_repr(value)} is not allowed; choose one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error is the most precise
            return _convert(value, options[0], where)
        for arg in options:
            try:
                return _convert(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {brief_repr(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {brief_repr(value)}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {brief_repr(value)}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {brief_repr(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {brief_repr(value)}")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
            raise ConfigError(f"{where}: expected an integer, got {brief_repr(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads "1e-3" as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {brief_repr(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond 1.8e308
            raise ConfigError(f"{where}: {brief_repr(value)} is too large for a number") from None
        if math.isnan(value):  # no setting means "not a number"; inf is left to the config's validate
            raise ConfigError(f"{where}: expected a number, got nan")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {brief_repr(value)}")
        return value
    return value


def closest(key: str, allowed: list[str]) -> str | None:
    """The likeliest intended key: a typo (difflib), else one that the key contains or extends."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
    if close:
        return close[0]
    parts = [a for a in allowed if len(a) >= 2 and (a in key or key in a)]
    if parts:
        return max(parts, key=len)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_key_error(key: str, allowed: list[str], section: str) -> ConfigError:
    close = closest(key, allowed)
    hint = f" Did you mean {close!r}?" if close else ""
    return ConfigError(
        f"unknown key {brief_repr(key)} in section {section!r}.{hint} Allowed keys: {', '.join(sorted(allowed))}"
    )


def from_dict(cls: type[T], data: dict[str, Any], section: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly: unknown keys and bad types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a mapping, got {brief_repr(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            shown = key if isinstance(key, str) else brief_repr(key)
            raise unknown_key_error(shown, list(fields), section or cls.__name__)
        where = f"{section}.{key}" if section else key
        kwargs[key] = _convert(value, hints[key], where)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{section or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:  # clipped: a validate may print a whole (huge) value
            raise ConfigError(_clip(f"{section}: {e}" if section else str(e))) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data (for YAML/JSON) from a dataclass, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {brief_repr(text)}")
    key, raw = text.split("=", 1)
    try:  # the same limits as a file: a value can be an alias bomb too
        value = _safe_load(raw, f"--set {_clip(key.strip(), 60)}") if raw.strip() else ""
    except yaml.YAMLError:  # not YAML: the text itself
        value = raw
    return key.strip().split("."), value


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {brief_repr('.'.join(path))}: {brief_repr(part)} is not a section")
        node = nxt
    node[path[-1]] = value


def at_least_one(obj: Any, keys: tuple[str, ...]) -> None:
    """Each of `obj`'s fields named in `keys` is at least 1 (None, where a field allows it, means "not set")."""
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
