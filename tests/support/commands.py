"""The commands the documentation shows, read from README.md, docs/*.md and the study headers.

Tests run or check each one as written (after replacing placeholders such as ``/data/coco`` or
``<launch time>`` with real paths), so a documented command that stops working fails a test,
and no test keeps its own copy of a command.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = ("README.md", "docs/*.md", "sweeps/study/*.yaml", "conf/*/*.yaml", "conf/README.md")
PREFIXES = ("python run.py", "python -m rtmdet_exp.", "torchrun ")
_INLINE = re.compile(r"`((?:python run\.py|python -m rtmdet_exp\.|torchrun )[^`]*)`")


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str  # the command as documented (continuations joined, trailing comment removed)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


def _strip_comment(line: str) -> str:
    """Drop a trailing ``# comment`` and a trailing ``(explanation)`` (outside quotes)."""
    out, quote = [], ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] == " "):
            break
        out.append(char)
    text = "".join(out).rstrip()
    return re.sub(r"\s+\([^()]*\)$", "", text).rstrip()


def _from_lines(path: Path, lines: list[str], in_block: list[bool]) -> list[Command]:
    found, rel = [], path.relative_to(REPO)
    i = 0
    while i < len(lines):
        raw = lines[i]
        body = raw.lstrip("# ").strip() if path.suffix == ".yaml" else raw.strip()
        if path.suffix == ".yaml" and ":" in body and not body.startswith(PREFIXES):
            body = body.split(":", 1)[1].strip()  # "# Paper setting:   python run.py ..." headers
        start = i
        if (in_block[i] or path.suffix == ".yaml") and body.startswith(PREFIXES):
            while body.endswith("\\") and i + 1 < len(lines):
                i += 1
                body = body[:-1].rstrip() + " " + lines[i].lstrip("# ").strip()
            found.append(Command(f"{rel}:{start + 1}", _strip_comment(body)))
        elif not in_block[i]:
            found.extend(Command(f"{rel}:{i + 1}", _strip_comment(m.group(1))) for m in _INLINE.finditer(raw))
        i += 1
    return found


def documented_commands() -> list[Command]:
    """Every ``python run.py``, ``python -m rtmdet_exp.*`` and ``torchrun`` command in the docs."""
    commands: list[Command] = []
    for pattern in DOC_FILES:
        for path in sorted(REPO.glob(pattern)):
            lines = path.read_text().splitlines()
            in_block, inside = [], False
            for line in lines:
                if line.strip().startswith("```"):
                    inside = not inside
                    in_block.append(False)
                else:
                    in_block.append(inside and path.suffix == ".md")
            commands.extend(_from_lines(path, lines, in_block))
    return commands


def tool_of(command: Command) -> str:
    """``run.py``, ``torchrun`` or the ``rtmdet_exp.<tool>`` module name."""
    argv = command.argv
    if argv[0] == "torchrun":
        return "torchrun"
    return argv[2] if argv[1] == "-m" else "run.py"


def run_py_args(command: Command) -> list[str]:
    """The arguments a documented command passes to run.py (after ``python run.py`` or torchrun's options)."""
    argv = command.argv
    index = next(i for i, a in enumerate(argv) if a.endswith("run.py"))
    return argv[index + 1:]


def first_value(override_line: str) -> str:
    """A sweep override's first setting as a plain override (``k=a,b`` -> ``k=a``; intervals: their low end)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([override_line])
    if not override.is_sweep_override():
        return override_line
    key = override_line.split("=", 1)[0]
    if override.is_interval_sweep():
        return f"{key}={override.value().start}"
    return f"{key}={next(iter(override.sweep_string_iterator()))}"


def compose_first_job(args: list[str]):
    """What the first job of ``python run.py [-m] ARGS`` composes to: ``(config, hydra config)``.

    Sweeps on the command line and in the study's ``hydra.sweeper.params`` take their first setting.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from rtmdet_exp.experiment import CONF_DIR, register

    register()
    line = [first_value(a) for a in args if a not in ("-m", "--multirun")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="run"):
        cfg = compose(config_name="config", overrides=line, return_hydra_config=True)
        given = {a.split("=", 1)[0].lstrip("+~") for a in line}
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        extra = [first_value(f"{k}={v}") for k, v in params.items() if k not in given]
        if extra:
            cfg = compose(config_name="config", overrides=[*extra, *line], return_hydra_config=True)
    hydra_cfg = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra_cfg
