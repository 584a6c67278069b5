"""A search space in the grammar of Hydra's overrides, as Optuna distributions.

``interval(a,b)`` is a float range, ``int(interval(a,b))`` an integer one,
``tag(log, ...)`` samples either on a log scale; ``choice(...)`` and ``a,b,c`` are
categorical; ``range(a,b[,step])`` is an integer range with that step (a float range is
categorical over its values). Sweep overrides on the command line join the
``hydra.sweeper.params`` mapping (the command line wins); every other override stays
fixed for every trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from runner.errors import SearchConfigError, invalid_override

Choice = None | bool | int | float | str


@dataclass
class Param:
    """One searched key: its name in the study, how the override writes it (``+`` to
    add a key), the distribution, and a value to try the key with."""

    name: str
    prefix: str
    distribution: BaseDistribution
    example: Any

    def override(self, value: Any) -> str:
        return f"{self.prefix}{self.name}={format_value(value)}"


def format_value(value: Any) -> str:
    """A sampled value in override syntax (strings quoted when the grammar needs it)."""
    if isinstance(value, str):
        plain = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "")
        if plain.isalnum() or value == "":
            return value if value else "''"
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def _problem(where: str, text: str, rule: str, fix: str) -> SearchConfigError:
    return SearchConfigError(f"{where}: {invalid_override(text, rule, fix)}")


def _distribution(override: Override, where: str) -> tuple[BaseDistribution, Any]:
    value = override.value()
    text = override.input_line or override.get_key_element()
    key = override.get_key_element()
    tags = set(getattr(value, "tags", set()) or set())
    unknown = tags - {"log"}
    if unknown:
        raise _problem(
            where,
            text,
            f"unknown tag(s) {sorted(unknown)}; the search knows log",
            f"{key}=tag(log, interval(1e-4, 1e-1))",
        )
    log = "log" in tags
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        assert low is not None and high is not None
        if not low < high:
            raise _problem(
                where,
                text,
                f"the interval is empty or reversed ({low} >= {high})",
                f"{key}=interval({min(low, high)},{max(low, high)}) with low < high",
            )
        if log and low <= 0:
            raise _problem(
                where,
                text,
                "a log scale needs low > 0",
                f"{key}=tag(log, interval({high / 1000:g},{high}))",
            )
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log), low
        return FloatDistribution(float(low), float(high), log=log), float(low)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        assert start is not None and stop is not None
        count = math.ceil((stop - start) / step) if step else 0
        if count <= 0:
            raise _problem(
                where,
                text,
                "the range is empty (range stops before it starts)",
                f"{key}=range({min(start, stop)},{max(start, stop)})",
            )
        values = [start + i * step for i in range(count)]
        if not all(isinstance(v, int) for v in values):
            values = [round(v, 12) for v in values]  # 0.1 + 2 * 0.1 is 0.3 here
        if log:
            raise _problem(
                where,
                text,
                "log applies to interval(...)",
                f"{key}=tag(log, interval({min(values)},{max(values)}))",
            )
        if isinstance(start, int) and isinstance(stop, int) and isinstance(step, int):
            if step > 0:
                return IntDistribution(start, int(values[-1]), step=step), start
        return CategoricalDistribution(values), values[0]
    if isinstance(value, ChoiceSweep):
        choices: list[Choice] = [
            c for c in value.list if isinstance(c, (type(None), bool, int, float, str))
        ]
        if len(choices) != len(value.list) or not choices:
            raise _problem(
                where,
                text,
                "choices are numbers, strings, booleans or null",
                f"{key}=choice(a,b,c)",
            )
        if log:
            raise _problem(
                where, text, "log applies to interval(...)", f"{key}=tag(log, interval(1e-4, 1e-1))"
            )
        return CategoricalDistribution(choices), choices[0]
    raise _problem(where, text, "not a search space", f"{key}=interval(0,1) or {key}=a,b,c")


def parse_space(arguments: list[str], params: dict[str, Any]) -> tuple[list[Param], list[str]]:
    """The searched keys (``params`` first, then the command line's sweeps, which win)
    and the fixed overrides of every trial."""
    parser = OverridesParser.create()
    found: dict[str, Param] = {}
    fixed: list[str] = []
    sources = [
        ("hydra.sweeper.params", [f"{k}={v}" for k, v in (params or {}).items()]),
        ("the command line", list(arguments)),
    ]
    for where, texts in sources:
        for override in parser.parse_overrides(texts):
            if not override.is_sweep_override():
                if where == "the command line":
                    fixed.append(override.input_line or "")
                    found.pop(override.get_key_element().lstrip("+~"), None)
                else:  # a fixed value in params: every trial gets it
                    fixed.append(
                        f"{override.get_key_element()}={override.get_value_element_as_str()}"
                    )
                continue
            key = override.get_key_element()
            name = key.lstrip("+~")
            distribution, example = _distribution(override, where)
            found[name] = Param(name, key[: len(key) - len(name)], distribution, example)
    return list(found.values()), fixed


def space_record(space: list[Param]) -> dict[str, str]:
    """The space as the study keeps it, readable where the study is shown
    (``FloatDistribution(high=0.1, log=True, low=0.001, step=None)``), to see whether a
    later run asks for the same."""
    return {p.name: repr(p.distribution) for p in space}
