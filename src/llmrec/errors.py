"""Errors that name the problem: file, line and field, or the unknown name and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class LLMRecError(Exception):
    """Base error for everything llmrec reports to a user (the CLI maps it to exit code 2)."""


class DataError(LLMRecError):
    """Bad input data: names the file, the line (1-based, header = line 1) and the field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class UnknownNameError(LLMRecError, KeyError):
    """An unknown data set, model, encoder, user or item, with the valid choices when they are few."""

    def __init__(self, kind: str, name: object, choices: Iterable[object] | None = None):
        self.kind, self.name = kind, name
        msg = f"unknown {kind} {name!r}"
        if choices is not None:
            choices = sorted(map(str, choices))
            if len(choices) <= 30:
                msg += f"; valid choices: {', '.join(choices)}"
            else:
                msg += f" ({len(choices)} known, e.g. {', '.join(choices[:5])})"
        self.message = msg
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ConfigError(LLMRecError):
    """A config key that does not exist or a value of the wrong type or range."""


class StoreUnavailable(LLMRecError):
    """The service's database cannot be reached (or answers with an error); names the store, never its
    password. The server answers 503: the request may be retried."""
