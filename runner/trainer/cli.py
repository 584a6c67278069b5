"""What ``python -m runner`` checks before Hydra starts (every override parses), and
what its ``--help`` lists.

Hydra's own message for a malformed override names neither the override nor what is
wrong with it in words (``no viable alternative at input '[0.1'``). This says which
override, its key and value, what is wrong and how to write it, in runner's usual
form, and nothing starts. Parsing uses Hydra's own override grammar, so what passes
here is exactly what Hydra accepts; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from runner.errors import invalid

# runner's config dir: the groups in it are the options a user picks.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

GRAMMAR_URL = "https://hydra.cc/docs/advanced/override_grammar/basic/"
_PAIRS = {"[": "]", "{": "}", "(": ")"}


def _what_is_wrong(value: str, parser_says: str) -> str:
    """The likely mistake in a value, in words."""
    for quote in ("'", '"'):
        if value.count(quote) % 2:
            return f"its {quote} quote is never closed"
    stack: list[str] = []
    for char in value:
        if char in _PAIRS:
            stack.append(_PAIRS[char])
        elif char in _PAIRS.values():
            if not stack or stack.pop() != char:
                return f"it closes a {char!r} that was never opened"
    if stack:
        return f"it opens a bracket that is never closed (a {stack[-1]!r} is missing)"
    first = parser_says.strip().splitlines()[-1] if parser_says.strip() else parser_says
    return f"Hydra's override grammar cannot read it ({first})"


def malformed_override(argv: Sequence[str]) -> str | None:
    """The error message for the first command-line override Hydra cannot parse, or
    None if every one parses. Flags (``-m``, ``--cfg job``) are Hydra's to check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or not ("=" in arg or arg.startswith(("+", "~"))):
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as error:
            key, sep, value = arg.partition("=")
            lines = [line for line in str(error).splitlines() if not line.startswith("See ")]
            said = lines[-1] if lines else str(error)
            if not sep:
                rule = "an override is KEY=VALUE (+KEY=VALUE adds a key, ~KEY removes one)"
                return invalid("override", arg, rule, f"{arg}=VALUE")
            fix = (
                f"write {key}=VALUE in Hydra's override grammar, e.g. {key}=0.1, a list as "
                f"'{key}=[0.1,0.2]' or a sweep as {key}=0.1,0.2, quoted for the shell where "
                f"it has brackets, spaces or quotes (see {GRAMMAR_URL})"
            )
            rule = f"cannot be parsed: {_what_is_wrong(value, said)}"
            return f"override {arg!r}: " + invalid(key, value, rule, fix)
    return None


def known_keys() -> set[str]:
    """Every key runner's config schemas define (``optim.lr``, ``trainer.epochs``, ...)."""
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    from runner.trainer.config import GROUP_SCHEMAS, RunnerConf

    def flat(schema: type, prefix: str) -> set[str]:
        keys = set()
        types = get_type_hints(schema)
        for f in fields(schema):
            keys.add(prefix + f.name)
            kind = types.get(f.name)
            if isinstance(kind, type) and is_dataclass(kind):
                keys |= flat(kind, f"{prefix}{f.name}.")
        return keys

    keys = flat(RunnerConf, "")
    for group, _, schema in GROUP_SCHEMAS:
        keys |= flat(schema, f"{group}.")
    return {k for k in keys if not k.rsplit(".", 1)[-1].startswith("_")}


def did_you_mean(argv: Sequence[str]) -> str | None:
    """For a run Hydra refused: the override whose key runner's configs lack but
    nearly spell (``optim.lrr=0.1``), with the key they have (``optim.lr``)."""
    import difflib

    known = known_keys()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith(("-", "+", "~")) or "." not in key or key in known:
            continue
        if key.startswith("hydra."):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            return (
                f"Did you mean {close[0]}={value}? ({key} is not a key of runner's "
                f"configs; +{key}={value} would add it, and nothing would read it)"
            )
    return None


def config_groups(conf_dir: str = CONF_DIR) -> str:
    """``--help``'s list of config groups and their options, from the config dir alone
    (the schemas in Hydra's ConfigStore are not options to pick)."""
    lines = []
    root = Path(conf_dir)
    for group in sorted(p for p in root.rglob("*") if p.is_dir()):
        name = group.relative_to(root).as_posix()
        options = sorted(f.stem for f in group.glob("*.yaml"))
        if options and name != "hydra" and not name.startswith("hydra/"):
            lines.append(f"{name}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("runner_groups", config_groups, replace=True)
