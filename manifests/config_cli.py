"""Command lines built from the config dataclasses: one flag per field, and the parsed flags back
into the dataclass, so that options, defaults and help live in one place (the dataclass).

    @dataclass
    class Config:
        output: str = field(metadata=cli("directory that receives the shards"))   # required
        steps: int = field(default=1000, metadata=cli("optimiser steps in total"))
        device: Literal["auto", "cpu", "cuda"] = "auto"
        report: bool = field(default=True, metadata=cli("rebuild the report at the end"))

    cfg = parse_config(Config, argv)          # or: parser = config_parser(Config); ...; config_from_args(...)

Rules (a field -> ``add_argument``):

- name ``max_pause`` -> ``--max-pause`` (``cli(flag="--x")`` renames it; ``dest`` stays the field);
- type from the annotation: ``int | float | str``; ``X | None`` (Optional) -> ``X``;
  ``Literal[...]`` -> ``choices``; ``list[X]`` / ``tuple[X, ...]`` -> ``nargs="+"`` (or
  ``cli(action="append")``: one value per repeated flag);
- ``bool`` -> a switch: ``--name`` (``store_true``) when the default is False, ``--no-name``
  (``store_false``, its help "do not <the field's help>") when it is True;
- default from the field (``default`` or ``default_factory``); no default -> ``required``;
- help from ``field(metadata={"help": ...})`` (``cli(...)`` writes that dict), with the default
  appended unless the text mentions it already;
- ``cli(skip=True)`` (or ``skip=`` of the functions) leaves a field off the command line: its
  default, or a value passed as ``extra``, is used. Other annotations (dicts, nested
  dataclasses) must be skipped so: building the parser raises TypeError otherwise.

The dataclass's ``__post_init__`` validation runs when the parsed values become the dataclass;
its error (a ``ValueError``, such as the packages' ``ConfigError``) becomes an argparse error:
usage, ``prog: error: <message>`` on stderr and exit status 2, never a traceback.

No third-party library: the ones that do this (simple-parsing, tyro, jsonargparse) are not in
the environment, and the rules above are all the entry points need.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def cli(help_text: str = "", *, flag: str | None = None, group: str | None = None, metavar: str | None = None,
        choices: Sequence[Any] | None = None, action: Literal["append"] | None = None,
        nargs: str | None = None, skip: bool = False) -> dict[str, Any]:
    """Field metadata for the command line: ``field(default=..., metadata=cli("help text"))``."""
    meta: dict[str, Any] = {"help": help_text}
    for k, v in (("flag", flag), ("group", group), ("metavar", metavar), ("choices", choices),
                 ("action", action), ("nargs", nargs)):
        if v is not None:
            meta[k] = v
    if skip:
        meta["cli"] = False
    return meta


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Module docstrings as descriptions keep their layout (usage examples)."""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` / ``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"union {tp} is not supported on the command line (only X | None)")
    return tp, False


def _argument(f: dataclasses.Field, tp: Any, help_override: str | None) -> tuple[list[str], dict[str, Any]]:
    """The ``add_argument`` call for one field: (option strings, keyword arguments)."""
    meta = f.metadata
    default = _default(f)
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"dest": f.name}
    help_text = help_override if help_override is not None else meta.get("help", "")
    help_text = help_text.replace("%", "%%")  # argparse %-formats help: a "10 %" must print as is
    tp, _optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)

    if tp is bool:
        if default is _MISSING or default is None:
            raise TypeError(f"bool field {f.name!r} needs a default (False: --{f.name}, True: --no-{f.name})")
        if default:
            flag = meta.get("flag") or "--no-" + f.name.replace("_", "-")
            kw["action"] = "store_false"
        else:
            kw["action"] = "store_true"
        kw["default"] = default
        if default and help_text:  # the field's help says what it does when on: --no-x turns it off
            help_text = f"do not {help_text}"
        kw["help"] = help_text or None
        return [flag], kw

    if origin is Literal:
        choices = list(typing.get_args(tp))
        kw["choices"] = choices
        kw["type"] = type(choices[0])
    elif origin in (list, tuple, Sequence, Iterable) or tp in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = args[0] if args else str
        item, _ = _unwrap_optional(item)
        if typing.get_origin(item) is Literal:
            kw["choices"] = list(typing.get_args(item))
            item = type(kw["choices"][0])
        if item not in (int, float, str):
            raise TypeError(f"field {f.name!r}: list items of type {item} are not supported on the command line")
        kw["type"] = item
        if meta.get("action") == "append":
            kw["action"] = "append"
        else:
            kw["nargs"] = meta.get("nargs", "+")
    elif tp in (int, float, str):
        kw["type"] = tp
    else:
        raise TypeError(f"field {f.name!r} of type {tp} has no command-line form: mark it cli(skip=True) "
                        "and pass its value as `extra`")
    if "choices" in meta:
        kw["choices"] = list(meta["choices"])
    if "metavar" in meta:
        kw["metavar"] = meta["metavar"]
    if default is _MISSING:
        kw["required"] = True
    else:
        # `append` would add to a mutable default list: start from None and fill in after parsing
        kw["default"] = None if kw.get("action") == "append" else default
        if default not in (None, "", []) and "default" not in help_text:
            help_text = f"{help_text} (default %(default)s)" if help_text else "default %(default)s"
            if kw.get("action") == "append":
                help_text = help_text.replace("%(default)s", repr(default))
    kw["help"] = help_text or None
    return [flag], kw


def _fields(cls: type, skip: Iterable[str]) -> list[tuple[dataclasses.Field, Any]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)
            if f.init and f.name not in skip and f.metadata.get("cli", True)]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = (),
                         helps: Mapping[str, str] | None = None,
                         groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Add one argument per field of dataclass ``cls`` to ``parser``; returns the argument groups
    by name (to add more flags to a section).

    ``helps`` overrides help texts by field name; ``groups`` maps a group name (a field's
    ``cli(group=...)``) to its title shown in ``--help``, in the order they appear in ``--help``
    (groups it does not name follow, in the order fields first use them).
    """
    # the groups named in `groups` first, in that order; others as fields first use them
    made = {g: parser.add_argument_group(title) for g, title in (groups or {}).items()}
    for f, tp in _fields(cls, skip):
        opts, kw = _argument(f, tp, (helps or {}).get(f.name))
        g = f.metadata.get("group")
        target = parser
        if g is not None:
            if g not in made:
                made[g] = parser.add_argument_group((groups or {}).get(g, g))
            target = made[g]
        target.add_argument(*opts, **kw)
    return made


def config_parser(cls: type, *, description: str | None = None, prog: str | None = None,
                  skip: Iterable[str] = (), helps: Mapping[str, str] | None = None,
                  groups: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one argument per field of ``cls`` (see the module's rules)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    add_config_arguments(parser, cls, skip=skip, helps=helps, groups=groups)
    return parser


def config_from_args(cls: type[T], args: argparse.Namespace, parser: argparse.ArgumentParser | None = None, *,
                     extra: Mapping[str, Any] | None = None,
                     errors: tuple[type[BaseException], ...] = (ValueError,)) -> T:
    """The parsed ``args`` (those of ``cls``'s fields) + ``extra`` -> ``cls(...)``.

    A validation error of type ``errors`` raised by ``cls`` becomes ``parser.error(message)``
    (usage + message on stderr, exit status 2) when a parser is given; else it propagates.
    """
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name not in names:
            continue
        if value is None and names[name].metadata.get("action") == "append":
            value = _default(names[name])  # no flag given: the field's own default list
            if value is _MISSING:
                continue
        if isinstance(value, list) and typing.get_origin(_unwrap_optional(hints[name])[0]) is tuple:
            value = tuple(value)  # argparse collects lists
        kw[name] = value
    kw.update(extra or {})
    try:
        return cls(**kw)
    except errors as e:
        if parser is None:
            raise
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, description: str | None = None,
                 prog: str | None = None, skip: Iterable[str] = (), extra: Mapping[str, Any] | None = None,
                 helps: Mapping[str, str] | None = None,
                 customize: Callable[[argparse.ArgumentParser], None] | None = None,
                 errors: tuple[type[BaseException], ...] = (ValueError,)) -> T:
    """Build the parser of ``cls``, parse ``argv`` (default: sys.argv[1:]) and return the validated
    dataclass; exits with status 2 and the validation message on a bad value."""
    parser = config_parser(cls, description=description, prog=prog, skip=skip, helps=helps)
    if customize is not None:
        customize(parser)
    return config_from_args(cls, parser.parse_args(argv), parser, extra=extra, errors=errors)
