"""Command-line flags derived from the config dataclasses.

Every field of a config dataclass becomes one ``--flag`` (the field name with dashes, or the
field's ``flag`` metadata), typed from its annotation: ``bool`` -> ``--x / --no-x``, ``Literal``
-> choices, ``Optional[X]`` -> X or ``none``, fixed-length tuples -> that many numbers; its help
is the field's ``help`` metadata and shows the default. A field's ``parse`` metadata, when
present, parses the value (e.g. ``--background white``). Flags that are not given stay out of
the namespace, so :func:`config_from_args` changes only what the user typed (which is what a
resumed run needs).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Iterable, Optional, TypeVar

from feature3dgs.utils.optional import require

__all__ = ["add_config_args", "config_from_args", "given", "split_list", "numbers", "require_requested_packages"]

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _typed(convert: Callable[[str], Any], optional: bool, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.strip().lower() == "none":
            return None
        try:
            return convert(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}" + (f" ({e})" if str(e) else "")) from None
    return parse


def _finite_float(text: str) -> float:
    v = float(text)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return v


def _field_kwargs(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    base, optional = _unwrap_optional(tp)
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    help_text = meta.get("help", "")
    shown = "none" if default is None else (",".join(f"{v:g}" for v in default) if isinstance(default, tuple)
                                             else default)
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{help_text} (default: {shown})"}
    if "parse" in meta:
        kw["type"] = _typed(meta["parse"], optional, help_text or f.name)
        kw["metavar"] = f.name.upper()
    elif base is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) is typing.Literal:
        choices = list(typing.get_args(base))
        kw["type"] = _typed(str, optional, "one of " + ", ".join(choices))
        kw["choices"] = choices + ([None] if optional else [])
        kw["metavar"] = "{" + ",".join(choices + (["none"] if optional else [])) + "}"
    elif typing.get_origin(base) is tuple:
        items = typing.get_args(base)
        kw["nargs"] = len(items)
        kw["type"] = _typed(_finite_float, False, "a number")
        kw["metavar"] = tuple(f"V{i}" for i in range(len(items)))
    elif base in (int, float, str):
        convert = {int: int, float: _finite_float, str: str}[base]
        kw["type"] = _typed(convert, optional, {int: "an integer", float: "a finite number", str: "a string"}[base])
        kw["metavar"] = {int: "N", float: "X", str: "TEXT"}[base]
    else:  # pragma: no cover - a config field of a type this module does not know
        raise TypeError(f"{f.name}: no command-line form for type {tp!r}")
    return kw


def add_config_args(parser: Any, cls: type, *, only: Optional[Iterable[str]] = None,
                    skip: Iterable[str] = (), title: Optional[str] = None) -> list[str]:
    """Add one flag per field of the dataclass ``cls`` (``only`` those, minus ``skip``) to
    ``parser`` (or a new argument group titled ``title``). Returns the field names added."""
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(title) if title else parser
    keep = set(only) if only is not None else None
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (keep is not None and f.name not in keep):
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        target.add_argument(flag, **_field_kwargs(f, hints[f.name]))
        added.append(f.name)
    return added


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line (tuples for tuple fields)."""
    out = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return out


def config_from_args(cls: type[T], args: argparse.Namespace, base: Optional[T] = None, **fixed: Any) -> T:
    """``base`` (default ``cls()``) with the flags the user gave, then ``fixed``, applied."""
    values = {**given(args, cls), **fixed}
    return dataclasses.replace(base, **values) if base is not None else cls(**values)  # type: ignore[type-var]


def split_list(text: str) -> list[str]:
    """A comma-separated list ('chair,table') as non-empty, stripped items."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def numbers(n: int, what: str) -> Callable[[str], tuple[float, ...]]:
    """A parser of ``n`` comma-separated finite numbers (e.g. a point 'X,Y')."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            vals = tuple(_finite_float(x) for x in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) != n:
            raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated finite numbers, got {text!r}")
        return vals
    return parse


def require_requested_packages(given_options: dict[str, Any]) -> None:
    """Fail before any work when an option the user gave needs an optional package that is not
    installed (left at their defaults, these options skip quietly instead)."""
    if given_options.get("tensorboard") is True:
        require("tensorboard", "tensorboard", "--tensorboard (TensorBoard logs)")
    if given_options.get("lpips") in ("alex", "vgg"):
        require("lpips", "lpips", f"--lpips {given_options['lpips']} (the LPIPS metric)")
