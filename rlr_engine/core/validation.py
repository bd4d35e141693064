"""The one checker of untrusted values: what a preset file, ``--set``, a socket command or a
dashboard dialog gives is checked here, against the one statement of each range.

- ``Setting`` declares a value's type (bool, int, float, str, a tuple of numbers; maybe None)
  and its rule (a ``NumberRange``, a tuple of choices, or a function naming the problem);
  ``Setting.coerce`` returns the value in its type or raises ``Unfit`` saying what is allowed.
  The run config's fields and the commands' fields are declared with it.
- ``check_tau``, ``check_lr``, … check one value typed as text or a number and raise
  ValueError naming the field, the value and what is allowed.
- A number literal too large for a float ("1e400", from TOML, JSON or typed text) is refused
  everywhere: it is not ∞, which is spelled ``inf`` (TOML), ``Infinity`` (JSON) or typed
  ``inf``/``infinity``/``∞``.

Plain Python only, so any front end can validate before it sends a command.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INFINITY_WORDS = ("inf", "infinity", "∞")
SHOWN_CHARS = 40  # of a value quoted in a message; a longer one is cut, with its length said


def shown(value: Any) -> str:
    """``repr(value)`` for a message, cut to ``SHOWN_CHARS`` (a pasted 400-digit number stays
    readable; one over Python's digit limit, which has no repr, is described instead)."""
    try:
        text = repr(value)
    except ValueError:  # an int over sys.get_int_max_str_digits() (or a list holding one)
        if isinstance(value, int):
            return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
        return "a value too long to show"
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS - 1]}… ({len(text)} characters)"


def names_infinity(text: str) -> bool:
    """Whether ``text`` spells ±∞ (a number that overflowed to ∞, such as "1e400", does not)."""
    return text.strip().lower().lstrip("+-") in INFINITY_WORDS


def parse_infinity(value: Any) -> Any:
    """``inf`` (or infinity, ∞) typed as text means ∞; anything else is returned unchanged."""
    if isinstance(value, str) and value.strip().lower() in INFINITY_WORDS:
        return math.inf
    return value


@dataclass(frozen=True)
class NumberRange:
    """An interval of allowed numbers, with a note on what its special values mean. The one
    statement of each range: presets, commands and dashboard dialogs all check against it."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def allowed(self, noun: str = "a number") -> str:
        low, high = _bound(self.low), _bound(self.high)
        interval = f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        return f"{noun} in {interval}" + (f" ({self.note})" if self.note else "")

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):  # an int is compared exactly, however large
            return False
        return (value > self.low if self.low_open else value >= self.low) and (
            value < self.high if self.high_open else value <= self.high
        )


def _bound(value: float) -> str:
    """A bound as short as it stays exact: 1e+09, but 2147483647 (not 2.14748e+09)."""
    short = f"{value:g}"
    return short if isinstance(value, float) or float(short) == value else str(value)


TAU = NumberRange(0, math.inf, note="inf switches conditioning off")
LR = NumberRange(0, 100, low_open=True)
THETA = NumberRange(0, 1, high_open=True)
BETA = NumberRange(0, math.inf, high_open=True, note="0 switches the regularizer off")
ADAPT_EVERY = NumberRange(2, 100_000, note="batches per rank-adaptation window")


def check_number(field: str, value: Any, allowed_range: NumberRange) -> float:
    """``value`` (a number, or text such as "0.5" or "inf") as a float inside ``allowed_range``;
    ValueError naming the field, the value and the range otherwise."""
    problem = ValueError(f"{field} must be {allowed_range.allowed()}, got {shown(value)}")
    if isinstance(value, bool):
        raise problem
    text = value.strip() if isinstance(value, str) else value
    try:
        number = float(parse_infinity(text))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise problem from None
    if math.isinf(number) and isinstance(text, str) and not names_infinity(text):
        raise problem  # a finite number too large for a float ("1e400", 400 digits), not ∞
    if number not in allowed_range:
        raise problem
    return number


def check_tau(value: Any) -> float:
    """τ ∈ [0, ∞]; ∞ switches the conditioning off."""
    return check_number("tau", value, TAU)


def check_lr(value: Any) -> float:
    """Learning rate in (0, 100]."""
    return check_number("lr", value, LR)


def check_theta(value: Any) -> float:
    """Relative truncation tolerance θ ∈ [0, 1)."""
    return check_number("theta", value, THETA)


def check_beta(value: Any) -> float:
    """Weight β ∈ [0, ∞) of the soft conditioning regularizer; 0 switches it off."""
    return check_number("beta", value, BETA)


def eps_problem(values, max_eps: float = 1.0) -> str | None:
    """Why ``values`` is not a list of attack budgets (None when it is): non-empty, each in
    [0, max_eps] — [0, 1] for L∞ budgets in pixel units, [0, ∞) for L2 budgets."""
    if values and all(_is_budget(v, max_eps) for v in values):
        return None
    if max_eps == 1.0:
        return "a non-empty list of numbers in [0, 1] (pixel units)"
    # the range every attack shares; each then checks its own (L∞: [0, 1], L2: any length)
    return "a non-empty list of finite numbers >= 0"


def _is_budget(value: Any, max_eps: float) -> bool:
    """A finite number in [0, max_eps] (an int too large for a float is none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return 0.0 <= value <= max_eps and not math.isinf(value)


def parse_eps_text(text: str) -> tuple[float, ...]:
    """Attack budgets typed as text ("0,0.01,0.02", commas and/or spaces) as numbers, each
    >= 0; ValueError saying what is allowed otherwise. Each attack then checks its own range
    (L∞: [0, 1])."""
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    problem = eps_problem(values, max_eps=math.inf)
    if problem:
        raise ValueError(f"must be {problem}, e.g. 0,0.01,0.02")
    return values


def check_adapt_every(value: Any) -> int:
    """Window length k in [2, 100000] batches (augment on the first, truncate on the last)."""
    problem = ValueError(f"adapt_every must be {ADAPT_EVERY.allowed('an integer')}, got {shown(value)}")
    number = value
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():  # typed into the dashboard
        try:
            number = int(value.strip())
        except ValueError:  # more digits than Python converts
            raise problem from None
    if isinstance(number, bool) or not isinstance(number, int) or number not in ADAPT_EVERY:
        raise problem
    return number


class Overflowed(str):
    """A number literal that a float cannot hold ("1e400"), kept as its text so every checker
    refuses it as the typed text it is instead of reading it as ∞ (see ``parse_float``)."""

    def __repr__(self) -> str:
        return str.__str__(self)


def parse_float(text: str) -> float | Overflowed:
    """The ``parse_float`` hook for TOML and JSON readers: a literal that overflows stays text."""
    value = float(text)
    return Overflowed(text) if math.isinf(value) and not names_infinity(text) else value


class Unfit(ValueError):
    """A value that does not fit its ``Setting``; the message is what is allowed ("a number in
    [0, inf]", "one of sgd, adamw"), for the caller to frame with the field's name and source."""


Rule = NumberRange | tuple | Callable[[Any], str | None] | None


@dataclass(frozen=True)
class Setting:
    """What a field accepts from an untrusted source: ``kind`` (bool, int, float, str, tuple or
    dict), the ``item`` type of a tuple (int, float or str), whether None is allowed, and
    ``rule``: a NumberRange, a tuple of allowed strings, or a function returning the problem
    (None when the value is fine; called with None it returns what is allowed). ``help`` says
    what it does, for listings.

    A dict is a table of keyword arguments (TOML ``{num_classes = 10}``): string keys, values
    of any TOML type. A tuple of strings also takes one bare string (``--set
    lowrank_exclude=fc``) as a list of one."""

    kind: type
    rule: Rule = None
    item: type | None = None
    optional: bool = False
    help: str = ""

    def allowed(self) -> str:
        """What the field accepts, in words."""
        if isinstance(self.rule, NumberRange):
            return self.rule.allowed("an integer" if self.kind is int else "a number")
        if isinstance(self.rule, tuple):
            return f"one of {', '.join(self.rule)}"
        if callable(self.rule):
            return self.rule(None) or "a valid value"
        nouns = {
            bool: "true or false",
            int: "an integer",
            float: "a number",
            str: "a string",
            dict: "a table of keyword arguments, e.g. {num_classes = 10}",
        }
        items = {int: "integer", str: "string"}.get(self.item, "number")  # type: ignore[arg-type]
        noun = nouns.get(self.kind, f"a list of {items}s")
        return noun + (" or null" if self.optional else "")

    def coerce(self, value: Any) -> Any:
        """``value`` in this setting's type (an int for a float field becomes a float, a list a
        tuple); Unfit with what is allowed otherwise. Text that names ∞ is ∞ for a float."""
        if value is None:
            if self.optional:
                return None
            raise Unfit(self.allowed())
        value = self._typed(value)
        problem = self._rule_problem(value)
        if problem:
            raise Unfit(problem)
        return value

    def _typed(self, value: Any) -> Any:
        if self.kind is bool and isinstance(value, bool):
            return value
        if self.kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if self.kind is float:
            value = parse_infinity(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    return float(value)
                except OverflowError:  # an integer no float holds
                    raise Unfit("a number a float can hold") from None
        elif self.kind is str and isinstance(value, str) and not isinstance(value, Overflowed):
            return value
        elif self.kind is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        elif self.kind is tuple and self.item is str:
            if isinstance(value, str) and not isinstance(value, Overflowed):
                value = (value,)
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
        elif self.kind is tuple and isinstance(value, (list, tuple)):
            item = self.item or float
            if all(isinstance(v, item if item is int else (int, float)) and not isinstance(v, bool) for v in value):
                problem = self._rule_problem(value)  # before float() meets a huge int
                if problem:
                    raise Unfit(problem)
                try:
                    return tuple(item(v) for v in value)
                except OverflowError:
                    raise Unfit("a list of numbers a float can hold") from None
        raise Unfit(self.allowed())

    def _rule_problem(self, value: Any) -> str | None:
        if self.rule is None:
            return None
        if isinstance(self.rule, NumberRange):
            return None if value in self.rule else self.allowed()
        if isinstance(self.rule, tuple):
            return None if value in self.rule else self.allowed()
        return self.rule(value)
