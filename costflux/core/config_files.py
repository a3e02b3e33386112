"""The configuration files' common ground: YAML read with its lines, the shape checked by a
pydantic model, the first mistake reported as ``file:line: field: what to fix``.

A model's fields carry their fix-it message (:class:`Fix`); its validators raise
:func:`refuse`. Pydantic's ``loc`` of the first error is mapped back to the line of that field
in the text, so a message points at the line to edit. The same models give the JSON Schemas in
``schemas/json/`` (``costflux schemas``) that editors validate these files against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from costflux.core.money import MoneyError, exact_pico, to_decimal
from costflux.core.windows import duration_ms
from costflux.schemas._types import epoch_ms

__all__ = [
    "ConfigModel", "Duration", "Fix", "Moment", "Name", "NamedEntries", "Number", "YamlText",
    "check", "dollars", "mappings", "named_entry_error", "percentage", "refuse",
]

#: A field's path in the document: mapping keys and list indexes.
Path = tuple[str | int, ...]
Model = TypeVar("Model", bound=BaseModel)
_FIX = "costflux_fix"


def refuse(message: str, *at: str | int) -> PydanticCustomError:
    """The error a validator raises: ``message`` as the user reads it, about the field the
    validator checks or, with ``at``, a key or index under it."""
    return PydanticCustomError(_FIX, "{fix}", {"fix": message, "at": at})


@dataclass(frozen=True, slots=True)
class Fix:
    """``Annotated`` metadata: whatever is wrong with the field's value (its absence from a
    :class:`ConfigModel` included) is reported as ``message``, or ``message(value)``."""

    message: str | Callable[[Any], str]

    def say(self, value: Any) -> str:
        return self.message(value) if callable(self.message) else self.message

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._validate, handler(source))

    def _validate(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if exc.errors()[0]["type"] == _FIX:  # a more precise message from within
                raise
            raise refuse(self.say(value)) from None


def _decimal(value: Any) -> Decimal:
    try:
        return to_decimal(value)
    except MoneyError as exc:  # not refuse(): a field's Fix says it in its own words
        raise PydanticCustomError("number", "{problem}", {"problem": str(exc)}) from None


#: A number as written (an int, a float read through its shortest repr, or a numeric string),
#: exactly: amounts, thresholds and percentages.
Number = Annotated[Decimal, BeforeValidator(_decimal), WithJsonSchema({
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^[-+]?[0-9]*\.?[0-9]+$"}],
})]


#: A price or an amount, exactly, as a JSON Schema.
AMOUNT_SCHEMA = WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]})


def dollars(example: str, exact: bool = False) -> BeforeValidator:
    """A price as written, >= 0 (``exact``: a whole number of pico-dollars); an error
    suggests writing ``example``."""
    def read(value: Any) -> Decimal:
        try:
            amount = to_decimal(value)
        except MoneyError as exc:
            raise refuse(f"{exc}; write a number such as {example}") from None
        if amount < 0:
            raise refuse("a price cannot be negative")
        if exact:
            try:
                exact_pico(amount)
            except MoneyError as exc:
                raise refuse(str(exc)) from None
        return amount
    return BeforeValidator(read)


def percentage(example: str) -> BeforeValidator:
    """A discount in percent, 0 to 100; an error suggests writing ``example``."""
    def read(value: Any) -> Decimal:
        try:
            pct = to_decimal(value)
        except MoneyError as exc:
            raise refuse(f"{exc}; write a percentage such as {example}") from None
        if not 0 <= pct <= 100:
            raise refuse("a discount is a percentage from 0 to 100")
        return pct
    return BeforeValidator(read)


PERCENT_SCHEMA = WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": 100},
                                           {"type": "string"}]})
_RFC3339 = "effective_from must be RFC 3339, e.g. 2025-01-01T00:00:00Z"


def _moment(value: Any) -> int:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise refuse(_RFC3339) from None
    else:
        raise refuse(_RFC3339)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # YAML timestamps without offset are UTC by spec
    return epoch_ms(moment)


#: A time, RFC 3339 (UTC without an offset), in epoch milliseconds.
Moment = Annotated[int, BeforeValidator(_moment), Fix(_RFC3339), WithJsonSchema({
    "type": "string", "description": "RFC 3339, e.g. 2025-01-01T00:00:00Z (UTC without offset)",
})]


def _mappings(value: Any) -> Any:
    if isinstance(value, list) and not all(isinstance(item, dict) for item in value):
        # Not refuse(): the list's Fix names what its items should be.
        raise PydanticCustomError("list_of_mappings", "expected a list of mappings")
    return value


#: ``Annotated`` metadata of a list of mappings: an item that is not one is the list's error.
mappings = BeforeValidator(_mappings)


def _duration(value: Any) -> int:
    length = duration_ms(str(value))
    if length is None:
        raise refuse(f"{value!r} is not a duration such as 90s, 30m, 1h or 1d")
    return length


#: A length of time in milliseconds, written 90s, 30m, 1h, 1d, 2w or 0.
Duration = Annotated[int, BeforeValidator(_duration), WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": r"^\s*(0|[0-9]+[smhdw])\s*$"}, {"const": 0}],
    "description": "a duration: 90s, 30m, 1h, 1d, 2w or 0",
})]
#: The name of a rule or a budget.
Name = Annotated[str, Strict(), Field(min_length=1), Fix("required, a non-empty string")]


class ConfigModel(BaseModel):
    """A mapping of a configuration file: unknown keys refused, each with a message to fix.

    ``shape`` is what to say when the value is not a mapping, ``unknown`` when it has a key
    the model does not (``{known}``: the keys it has). A missing required field is reported
    with its :class:`Fix` message for the value None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              arbitrary_types_allowed=True)

    shape: ClassVar[str] = "expected a mapping"
    unknown: ClassVar[str] = "unknown field; use one of {known}"

    @classmethod
    def _shaped(cls, value: Any) -> bool:
        return isinstance(value, dict)

    @classmethod
    def _check_raw(cls, value: dict[Any, Any]) -> None:
        """A check of the mapping as written, before its keys are (e.g. of their order)."""

    @model_validator(mode="before")
    @classmethod
    def _keys_named(cls, value: Any) -> Any:
        if not cls._shaped(value):
            raise refuse(cls.shape)
        cls._check_raw(value)
        names = {field.alias or name: field for name, field in cls.model_fields.items()}
        for key in value:
            if key not in names:
                raise refuse(cls.unknown.format(known=", ".join(sorted(names))), key)
        for name, field in names.items():
            if field.is_required() and name not in value:
                fix = next((m for m in field.metadata if isinstance(m, Fix)), None)
                raise refuse(fix.say(None) if fix else "required", name)
        return value


class NamedEntries(ConfigModel):
    """A file of named entries, ``<entries>: [{name: ..., ...}]``: names are unique."""

    unknown: ClassVar[str] = "unknown section; the file holds {known}"
    #: the key of the entries' list
    entries: ClassVar[str]

    @classmethod
    def _shaped(cls, value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get(cls.entries), list)

    @model_validator(mode="after")
    def _names_unique(self) -> Self:
        names: set[str] = set()
        for entry in getattr(self, self.entries):
            if entry.name in names:
                raise refuse(f"name {entry.name!r} is used twice; names must be unique")
            names.add(entry.name)
        return self


def named_entry_error(source: str, error: type[Exception]) -> Callable[[Path, str], Exception]:
    """``source: rules[0].signal: message``: how rules and budgets files name a mistake."""
    def problem(path: Path, message: str) -> Exception:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
        return error(f"{source}: {where[1:]}: {message}" if where else f"{source}: {message}")
    return problem


class YamlText:
    """A YAML document's values and the lines of its fields."""

    def __init__(self, text: str, source: str, error: type[Exception]) -> None:
        loader = yaml.SafeLoader(text)
        try:
            self._root = loader.get_single_node()
            self.value = loader.construct_document(self._root) if self._root else None
        except yaml.MarkedYAMLError as exc:
            # The problem and its place only: PyYAML's own message quotes the line, which may
            # hold a secret.
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            what = "; ".join(part for part in (exc.context, exc.problem) if part)
            raise error(f"{source}:{line}: not valid YAML: {what}") from None
        except yaml.YAMLError:
            raise error(f"{source}:1: not valid YAML") from None
        finally:
            loader.dispose()

    def repeated_key(self) -> tuple[Path, int] | None:
        """The first key given twice in a mapping (YAML keeps the last) and its line."""
        todo: list[tuple[Path, yaml.Node | None]] = [((), self._root)]
        while todo:
            path, node = todo.pop(0)
            if isinstance(node, yaml.MappingNode):
                seen: set[object] = set()
                for key, value in node.value:
                    if key.value in seen:
                        return (*path, key.value), key.start_mark.line + 1
                    seen.add(key.value)
                    todo.append(((*path, key.value), value))
            elif isinstance(node, yaml.SequenceNode):
                todo.extend(((*path, index), item) for index, item in enumerate(node.value))
        return None

    def line(self, path: Path, nearest: bool = True) -> int | None:
        """Line of the field's key (of the item, in a list); else, when ``nearest``, of the
        closest enclosing field that is there (the document's for ``()``), else None."""
        node: yaml.Node | None = self._root
        found = line = None if node is None or not (path or nearest) else node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if k.value == part), None)
                node, line = (pair[1], pair[0].start_mark.line + 1) if pair else (None, None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                node = node.value[part] if 0 <= part < len(node.value) else None
                line = None if node is None else node.start_mark.line + 1
            else:
                node = line = None
            if line is None:
                return found if nearest else None
            found = line
        return found


def check(model: type[Model], value: Any, problem: Callable[[Path, str], Exception]) -> Model:
    """``value`` as ``model``; its first mistake raised as ``problem(path, message)``."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        context = first.get("ctx") or {}
        path = (*first["loc"], *context.get("at", ()))
        raise problem(path, str(context.get("fix", first["msg"]))) from None
