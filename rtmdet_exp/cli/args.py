"""The one argument style of the tools: ``key=value`` options, plus config overrides where a tool takes them.

A tool declares its options as :class:`Option` s; :func:`parse` splits ``argv`` into the tool's
options (converted to their types) and the remaining config overrides (``model=rtmdet_s``,
``data.root=...``), prints ``--help``, and raises :class:`UsageError` (exit code 2 in :func:`run`)
for anything it cannot use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class UsageError(ValueError):
    """A command line the tool cannot use; the message says what is valid."""


@dataclass(frozen=True)
class Option:
    default: Any  # None = required when ``required`` is set, else optional
    help: str
    type: Callable[[str], Any] = str
    required: bool = False


def as_bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def usage(prog: str, summary: str, options: dict[str, Option], overrides: bool) -> str:
    lines = [f"usage: python -m {prog} " + " ".join(f"{k}=..." for k in options)
             + (" [config overrides, e.g. model=rtmdet_s data.root=...]" if overrides else ""), "", summary, ""]
    for key, opt in options.items():
        default = "required" if opt.required else f"default {opt.default!r}"
        lines.append(f"  {key + '=':<16} {opt.help} ({default})")
    return "\n".join(lines)


def parse(argv: Sequence[str], prog: str, summary: str, options: dict[str, Option],
          overrides: bool = False, positional: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """``(tool options, config overrides)``; ``positional`` names the option a bare argument fills."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage(prog, summary, options, overrides))
        sys.exit(0)
    values = {k: o.default for k, o in options.items()}
    rest: list[str] = []
    for arg in argv:
        key, sep, text = arg.partition("=")
        if overrides and arg.startswith("~"):  # Hydra's delete syntax: ~group
            rest.append(arg)
            continue
        if not sep and positional is not None and values[positional] in (None, options[positional].default):
            key, text = positional, arg
        elif not sep or (key not in options and not overrides):
            raise UsageError(f"unknown argument {arg!r}; valid: {', '.join(k + '=...' for k in options)}"
                             + (" and config overrides" if overrides else ""))
        if key not in options:
            rest.append(arg)
            continue
        try:
            values[key] = options[key].type(text)
        except ValueError as err:
            raise UsageError(f"{key}: {err}") from err
    missing = [k for k, o in options.items() if o.required and values[k] is None]
    if missing:
        raise UsageError(f"{', '.join(k + '=...' for k in missing)} required (see --help)")
    return values, rest


def run(main: Callable[[], Any]) -> Any:
    """Call a tool's ``main``; a usage or known user error prints ``error: ...`` and exits with code 2."""
    from rtmdet_exp.experiment.errors import user_errors

    try:
        return main()
    except (UsageError, *user_errors()) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
