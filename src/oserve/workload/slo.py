"""Service-level objectives: the TTFT and TPOT bounds a request must meet, and the share that must.

An SLO is given globally (``Slo(ttft_s, tpot_s)``, or a preset: ``loose`` = 2 s / 100 ms, ``tight`` =
1 s / 50 ms) or per request type / per input-length range in a YAML file::

    attainment: 0.9                  # share of requests that must meet both bounds (optional)
    default: {ttft_s: 2.0, tpot_s: 0.1}
    types:                           # by type index (T0 = shortest) or full type name
      T0: {ttft_s: 1.0, tpot_s: 0.05}
    input_ranges:                    # [min_input_tokens, max_input_tokens), first match wins
      - {min_input_tokens: 4096, ttft_s: 8.0}

A request's SLO is its type's rule, else the first input range containing its prompt, else the default;
a bound left out is unbounded. TTFT is measured from arrival, so it counts queueing. A request that is
dropped or unfinished misses its SLO. Errors in the file name the file, the line and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from oserve.common.errors import ConfigError

DEFAULT_ATTAINMENT = 0.9


@dataclass(frozen=True)
class Slo:
    """Bounds on time to first token (queueing included) and mean time per output token."""

    ttft_s: float = math.inf
    tpot_s: float = math.inf

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"SLO {name} must be a positive number of seconds, got {value}")

    def tightest(self, other: Slo) -> Slo:
        return Slo(min(self.ttft_s, other.ttft_s), min(self.tpot_s, other.tpot_s))

    def describe(self) -> str:
        def fmt(v: float, unit_ms: bool) -> str:
            return "-" if math.isinf(v) else (f"{v * 1e3:g} ms" if unit_ms else f"{v:g} s")
        return f"TTFT <= {fmt(self.ttft_s, False)}, TPOT <= {fmt(self.tpot_s, True)}"


SLO_PRESETS = {"loose": Slo(2.0, 0.1), "tight": Slo(1.0, 0.05)}


@dataclass(frozen=True)
class SloRule:
    """The SLO of one request type (``type_key`` "T<i>" or a full name) or one input-length range."""

    slo: Slo
    type_key: str | None = None
    min_input_tokens: int = 0
    max_input_tokens: int | None = None  # exclusive; None: no upper end
    where: str = ""  # "file:line" of the rule, for messages


@dataclass(frozen=True)
class SloSpec:
    """Every request's SLO and the attainment target (share of requests that must meet theirs)."""

    default: Slo | None
    rules: tuple[SloRule, ...] = ()
    attainment: float = DEFAULT_ATTAINMENT
    source: str = "flags"

    def __post_init__(self) -> None:
        if not 0 < self.attainment <= 1:
            raise ConfigError(f"attainment target must be in (0, 1], got {self.attainment}")

    def describe(self) -> str:
        base = self.default.describe() if self.default else "per-rule"
        extra = f" + {len(self.rules)} rules from {self.source}" if self.rules else ""
        return f"{base}{extra}, attainment >= {self.attainment:.0%}"

    def bounds(self, type_id: np.ndarray, type_names: list[str],
               input_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-request (TTFT bound, TPOT bound) in seconds; ConfigError if a request has no SLO."""
        type_id = np.asarray(type_id)
        input_tokens = np.asarray(input_tokens)
        n = len(type_id)
        ttft, tpot = np.full(n, np.nan), np.full(n, np.nan)
        for rule in self._type_rules(type_names) + [r for r in self.rules if r.type_key is None]:
            if rule.type_key is not None:
                hit = type_id == _type_index(rule, type_names)
            else:
                hit = input_tokens >= rule.min_input_tokens
                if rule.max_input_tokens is not None:
                    hit &= input_tokens < rule.max_input_tokens
            hit &= np.isnan(ttft)
            ttft[hit], tpot[hit] = rule.slo.ttft_s, rule.slo.tpot_s
        rest = np.isnan(ttft)
        if rest.any():
            if self.default is None:
                i = int(np.flatnonzero(rest)[0])
                raise ConfigError(f"SLO {self.source}: no rule covers a request of type "
                                  f"{type_names[int(type_id[i])]} with {int(input_tokens[i])} input "
                                  "tokens; add a 'default'")
            ttft[rest], tpot[rest] = self.default.ttft_s, self.default.tpot_s
        return ttft, tpot

    def type_slos(self, type_id: np.ndarray, type_names: list[str],
                  input_tokens: np.ndarray) -> list[Slo]:
        """Each type's SLO for planning: the tightest bound any of its requests has (conservative)."""
        ttft, tpot = self.bounds(type_id, type_names, input_tokens)
        out = []
        for t in range(len(type_names)):
            mask = np.asarray(type_id) == t
            if not mask.any():
                out.append(self.default or Slo())
                continue
            out.append(Slo(float(ttft[mask].min()), float(tpot[mask].min())))
        return out

    def _type_rules(self, type_names: list[str]) -> list[SloRule]:
        rules = [r for r in self.rules if r.type_key is not None]
        for r in rules:
            _type_index(r, type_names)  # validate early, with the rule's place
        return rules


def _type_index(rule: SloRule, type_names: list[str]) -> int:
    key = rule.type_key
    for i, name in enumerate(type_names):
        if key == name or key == f"T{i}":
            return i
    raise ConfigError(f"{rule.where}: field 'types.{key}': no request type of that name; the trace's "
                      f"types are {', '.join(f'T{i}' for i in range(len(type_names)))}")


def slo_from_flags(preset_or_file: str | None, ttft_s: float | None, tpot_s: float | None,
                   attainment: float | None) -> SloSpec | None:
    """The SLO the command line asks for; None when none was given.

    ``preset_or_file`` is a preset name or a YAML path; ``ttft_s``/``tpot_s`` set the default SLO's
    bounds over the preset's or the file's; ``attainment`` overrides the target.
    """
    if preset_or_file is None and ttft_s is None and tpot_s is None:
        if attainment is not None:
            raise ConfigError("--attainment needs an SLO: give --slo or --slo-ttft/--slo-tpot")
        return None
    if preset_or_file is None:
        spec = SloSpec(None)
    elif preset_or_file in SLO_PRESETS:
        spec = SloSpec(SLO_PRESETS[preset_or_file], source=f"preset '{preset_or_file}'")
    elif Path(preset_or_file).suffix in (".yaml", ".yml") or Path(preset_or_file).exists():
        spec = load_slo_file(preset_or_file)
    else:
        raise ConfigError(f"--slo: expected {' or '.join(SLO_PRESETS)} or a YAML file, got "
                          f"'{preset_or_file}'")
    if ttft_s is not None or tpot_s is not None:
        if (ttft_s is not None and ttft_s <= 0) or (tpot_s is not None and tpot_s <= 0):
            raise ConfigError("--slo-ttft and --slo-tpot must be positive seconds")
        base = spec.default or Slo()
        spec = SloSpec(Slo(ttft_s if ttft_s is not None else base.ttft_s,
                           tpot_s if tpot_s is not None else base.tpot_s),
                       spec.rules, spec.attainment, spec.source)
    if attainment is not None:
        spec = SloSpec(spec.default, spec.rules, attainment, spec.source)
    return spec


# ---- the YAML file ------------------------------------------------------------------------------------

@dataclass
class _Node:
    """A YAML value with the line it starts on (1-based)."""

    value: object
    line: int
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(node: yaml.Node) -> _Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = _Node({}, line)
        for k, v in node.value:
            out.children[str(k.value)] = _tree(v)
        return out
    if isinstance(node, yaml.SequenceNode):
        return _Node([_tree(v) for v in node.value], line)
    return _Node(yaml.safe_load(yaml.serialize(node)), line)


def load_slo_file(path: str | Path) -> SloSpec:
    """Parse an SLO YAML file; errors name the file, the line and the field."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read SLO file '{path}': {exc.strerror}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:1: an SLO file is a mapping with 'default', 'types', 'input_ranges'")
    tree = _tree(root)
    _known(tree, path, "", {"attainment", "default", "types", "input_ranges"})
    attainment = DEFAULT_ATTAINMENT
    if "attainment" in tree.children:
        node = tree.children["attainment"]
        attainment = _number(node, path, "attainment")
        if not 0 < attainment <= 1:
            raise ConfigError(f"{path}:{node.line}: field 'attainment' must be in (0, 1], got {attainment}")
    default = _slo(tree.children["default"], path, "default") if "default" in tree.children else None
    rules: list[SloRule] = []
    if "types" in tree.children:
        types = tree.children["types"]
        if not isinstance(types.value, dict):
            raise ConfigError(f"{path}:{types.line}: field 'types' must map type names to SLOs")
        for key, node in types.children.items():
            rules.append(SloRule(_slo(node, path, f"types.{key}"), type_key=key,
                                 where=f"{path}:{node.line}"))
    if "input_ranges" in tree.children:
        ranges = tree.children["input_ranges"]
        if not isinstance(ranges.value, list):
            raise ConfigError(f"{path}:{ranges.line}: field 'input_ranges' must be a list")
        for i, node in enumerate(ranges.value):
            rules.append(_range_rule(node, path, f"input_ranges[{i}]"))
    if default is None and not rules:
        raise ConfigError(f"{path}:1: the SLO file sets no 'default', 'types' or 'input_ranges'")
    return SloSpec(default, tuple(rules), attainment, path)


def _known(node: _Node, path: str, prefix: str, allowed: set[str]) -> None:
    for key, child in node.children.items():
        if key not in allowed:
            raise ConfigError(f"{path}:{child.line}: unknown field '{prefix}{key}' (expected one of "
                              f"{', '.join(sorted(allowed))})")


def _number(node: _Node, path: str, name: str) -> float:
    v = node.value
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path}:{node.line}: field '{name}' must be a number, got {v!r}")
    return float(v)


def _seconds(node: _Node, path: str, name: str) -> float:
    v = _number(node, path, name)
    if v <= 0:
        raise ConfigError(f"{path}:{node.line}: field '{name}' must be positive seconds, got {v:g}")
    return v


def _slo(node: _Node, path: str, name: str, extra: frozenset[str] = frozenset()) -> Slo:
    if not isinstance(node.value, dict):
        raise ConfigError(f"{path}:{node.line}: field '{name}' must be a mapping with ttft_s/tpot_s")
    _known(node, path, f"{name}.", {"ttft_s", "tpot_s"} | set(extra))
    c = node.children
    if "ttft_s" not in c and "tpot_s" not in c:
        raise ConfigError(f"{path}:{node.line}: field '{name}' needs ttft_s or tpot_s")
    return Slo(_seconds(c["ttft_s"], path, f"{name}.ttft_s") if "ttft_s" in c else math.inf,
               _seconds(c["tpot_s"], path, f"{name}.tpot_s") if "tpot_s" in c else math.inf)


def _tokens(node: _Node, path: str, name: str) -> int:
    v = node.value
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{path}:{node.line}: field '{name}' must be a whole number >= 0, got {v!r}")
    return v


def _range_rule(node: _Node, path: str, name: str) -> SloRule:
    slo = _slo(node, path, name, frozenset({"min_input_tokens", "max_input_tokens"}))
    c = node.children
    lo = _tokens(c["min_input_tokens"], path, f"{name}.min_input_tokens") if "min_input_tokens" in c else 0
    hi = _tokens(c["max_input_tokens"], path, f"{name}.max_input_tokens") if "max_input_tokens" in c \
        else None
    if hi is not None and hi <= lo:
        raise ConfigError(f"{path}:{c['max_input_tokens'].line}: field '{name}.max_input_tokens' must "
                          f"exceed min_input_tokens ({lo})")
    return SloRule(slo, None, lo, hi, f"{path}:{node.line}")


__all__ = ["DEFAULT_ATTAINMENT", "SLO_PRESETS", "Slo", "SloRule", "SloSpec", "load_slo_file",
           "slo_from_flags"]
