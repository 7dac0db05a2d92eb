"""The sweep's search space: Hydra override lines -> Optuna distributions and fixed values.

The grammar is the upstream hydra-optuna-sweeper's: ``choice(a,b)`` / ``a,b`` -> categorical,
``range(1,10)`` -> int (or stepped float) distribution over the values Hydra's range yields (stop
excluded), ``interval(0,1)`` -> float, ``tag(log, ...)`` -> log scale; any other value is fixed for
all trials. A later line for the same key replaces an earlier one, so the command line wins over
``hydra.sweeper.params``. Optuna is imported lazily: Hydra imports this module at every start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


class SearchSpace:
    """Sweep params split into Optuna distributions and values fixed for every trial.

    A plain class, not a dataclass: Hydra's plugin scanner executes this module before it is
    in ``sys.modules``, where ``@dataclass`` cannot resolve postponed annotations.
    """

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}
        self.fixed_lines: dict[str, str] = {}  # key -> override line as given
        self.fixed_values: dict[str, Any] = {}  # key -> value (trial user attr)
        # key -> encoded choice -> override text, for list/dict choices (stored as strings in Optuna)
        self.choice_texts: dict[str, dict[str, str]] = {}

    def drop(self, key: str) -> None:
        """Forget ``key`` so that a later override of it replaces the earlier one."""
        for table in (self.distributions, self.fixed_lines, self.fixed_values, self.choice_texts):
            table.pop(key, None)


def quote(text: str) -> str:
    """Single-quote ``text`` for Hydra's override grammar so that it parses back unchanged."""
    # Backslashes are literal in a quoted string except a run before a quote or at the end.
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def value_text(value: Any) -> str:
    """Override text of a sampled value: strings quoted, None/bools in YAML spelling."""
    if isinstance(value, str):
        return quote(value)
    return Transformer.str(value)


def param_line(key: str, value: Any) -> str:
    """Override line of a ``params`` entry: strings are grammar (``choice(..)``), the rest literals."""
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={Transformer.str(value)}"


def distribution_from_override(override: Override) -> BaseDistribution:
    """Optuna distribution of a sweep override (choice, range or interval)."""
    import optuna.distributions as od

    sweep = override.value()
    tags = getattr(sweep, "tags", set())
    if override.is_choice_sweep():
        # sweep.list keeps the written order even under shuffle(): a resumed study needs the
        # same choices in the same order
        return od.CategoricalDistribution([Transformer.encode(x) for x in sweep.list])
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise ValueError(f"params: {override.input_line!r} is an empty range")
        if sweep.shuffle:
            return od.CategoricalDistribution(sorted(values))
        low, high, step = min(values), max(values), abs(sweep.step)
        log_scale = "log" in tags
        if log_scale and step != 1:
            raise ValueError(f"params: {override.input_line!r}: a log-scaled range needs step 1")
        if all(isinstance(v, int) for v in values):
            return od.IntDistribution(int(low), int(high), log=log_scale, step=int(step))
        if log_scale:
            raise ValueError(f"params: {override.input_line!r}: a float range cannot be log-scaled")
        return od.FloatDistribution(float(low), float(high), step=float(step))
    if override.is_interval_sweep():
        return od.FloatDistribution(float(sweep.start), float(sweep.end), log="log" in tags)
    raise ValueError(f"params: {override.input_line!r} is not a choice, range or interval sweep")


def parse_search_space(lines: Sequence[str]) -> SearchSpace:
    """Parse override lines (``params`` first, then the command line) into a search space."""
    space = SearchSpace()
    for override in OverridesParser.create().parse_overrides(list(lines)):
        key = override.get_key_element()
        space.drop(key)
        if not override.is_sweep_override():
            space.fixed_lines[key] = override.input_line
            space.fixed_values[key] = (
                None if override.value() is None else override.get_value_element_as_str()
            )
            continue
        space.distributions[key] = distribution_from_override(override)
        if override.is_choice_sweep():
            texts = {
                Transformer.encode(x): Transformer.str(x)
                for x in override.value().list
                if isinstance(x, (list, dict))
            }
            if texts:
                space.choice_texts[key] = texts
    return space


def grid_search_space(distributions: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """All values of each discrete distribution, for ``optuna.samplers.GridSampler``."""
    import optuna.distributions as od

    grid: dict[str, list[Any]] = {}
    for key, dist in distributions.items():
        if isinstance(dist, od.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, od.IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, od.FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise ValueError(
                f"params: the grid sampler needs discrete values, {key!r} is continuous "
                "(use choice(...) or range(...))"
            )
    return grid
