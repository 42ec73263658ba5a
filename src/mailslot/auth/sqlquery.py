"""Dovecot's ``password_query`` turned into a query with bound parameters.

Dovecot expands ``%u`` and its kin into the query's text (escaping quotes), so an
administrator writes ``WHERE username = '%u'`` in ``dovecot-sql.conf.ext``.  Here no
variable's value ever becomes query text: :func:`compile_query` replaces each variable, and
any quoted literal that holds one, by a placeholder (``$1``, ``$2`` for PostgreSQL, ``%s``
for MySQL/MariaDB), and :meth:`Query.parameters` gives the values to bind.  So

    SELECT username AS user, password FROM users WHERE username = '%n' AND domain = '%d'

runs as ``... WHERE username = $1 AND domain = $2`` with ``("alice", "example.org")``, and

    SELECT password FROM mailbox WHERE username = '%n@%d'

as ``... WHERE username = $1`` with ``("alice@example.org",)``: a literal holding variables
is one parameter, its other text kept (``''`` read as one quote, and for MySQL a backslash
escape as the character it escapes).

Accepted, with the meaning of Dovecot's "Config variables" (doc.dovecot.org, 2.3):

- ``%u`` / ``%{user}``: the user name as given (after ``[auth] username_format``);
- ``%n`` / ``%{username}``: its part before the first ``@`` (all of it without one);
- ``%d`` / ``%{domain}``: its part after the first ``@`` (empty without one);
- ``%s`` / ``%{service}``: ``pop3``;
- modifiers ``L`` (lower case) and ``U`` (upper case), as ``%Lu`` or ``%L{user}``, and ``E``
  (Dovecot's SQL escape; a bound parameter needs none, so it changes nothing);
- ``%%``: a literal ``%``.

Anything else is refused with a message saying why (:class:`QueryError`): other variables
(the password ``%w``, addresses ``%r``/``%l``, which no passdb lookup here receives), widths
and other modifiers, a variable inside a PostgreSQL double-quoted identifier, a lone ``%``,
and a query that uses no user variable (every login would match the same rows).  A variable
stands for a value only: ``FROM users_%d`` is not a table name here but an SQL error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Driver", "Query", "QueryError", "Variable", "compile_query"]

Driver = Literal["postgresql", "mysql"]

# Dovecot's one-letter names and their long forms.
_SHORT = {"u": "user", "n": "username", "d": "domain", "s": "service"}
_LONG = frozenset(_SHORT.values())
_USER_VARIABLES = frozenset({"user", "username", "domain"})
_MODIFIERS = frozenset("LUE")
_ACCEPTED = (
    "accepted are %u %n %d %s, %{user} %{username} %{domain} %{service}, the modifiers L U E and %%"
)
# Dovecot variables a password lookup here cannot fill, with the reason.
_REFUSED = {
    "w": "the password (%w) is never sent to the database",
    "password": "the password (%{password}) is never sent to the database",
    "r": "the client address (%r) is not available to the query; use allow_nets",
    "rip": "the client address (%{rip}) is not available to the query; use allow_nets",
    "l": "the local address (%l) is not available to the query",
    "lip": "the local address (%{lip}) is not available to the query",
}


class QueryError(ValueError):
    """The query uses something this translation does not accept; the message says what."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One ``%``-variable: its long name and its modifiers (``L``, ``U``, ``E``)."""

    name: str
    modifiers: str = ""

    def value(self, values: dict[str, str]) -> str:
        text = values[self.name]
        for modifier in self.modifiers:
            if modifier == "L":
                text = text.lower()
            elif modifier == "U":
                text = text.upper()
        return text


Piece = str | Variable


@dataclass(frozen=True, slots=True)
class Query:
    """A query with placeholders, and what each placeholder's value is made of."""

    text: str
    driver: Driver
    arguments: tuple[tuple[Piece, ...], ...]

    def parameters(self, user: str, service: str = "pop3") -> tuple[str, ...]:
        """The values to bind for ``user``, in placeholder order."""
        local, _, domain = user.partition("@")
        values = {"user": user, "username": local, "domain": domain, "service": service}
        return tuple(
            "".join(p if isinstance(p, str) else p.value(values) for p in pieces)
            for pieces in self.arguments
        )


def compile_query(query: str, driver: Driver) -> Query:
    """Translate Dovecot's ``password_query`` syntax; raise :class:`QueryError`."""
    return _Compiler(query, driver).run()


class _Compiler:
    def __init__(self, query: str, driver: Driver) -> None:
        self.query = query
        self.driver = driver
        self.out: list[str] = []
        self.arguments: list[tuple[Piece, ...]] = []
        self.i = 0

    def run(self) -> Query:
        q = self.query
        if not q.strip():
            raise QueryError("is empty: give the SELECT that returns the user's password")
        while self.i < len(q):
            char = q[self.i]
            if char in "'\"":
                self.literal(char)
            elif q.startswith("--", self.i) or (char == "#" and self.driver == "mysql"):
                end = q.find("\n", self.i)
                self.verbatim(q[self.i :] if end < 0 else q[self.i : end])
            elif q.startswith("/*", self.i):
                end = q.find("*/", self.i + 2)
                if end < 0:
                    raise QueryError("has a /* comment that is never closed")
                self.verbatim(q[self.i : end + 2])
            elif char == "%":
                piece = self.variable()
                if isinstance(piece, str):
                    self.out.append(self.escape_percent(piece))
                else:
                    self.placeholder((piece,))
            else:
                self.out.append(char)
                self.i += 1
        used = {p.name for pieces in self.arguments for p in pieces if isinstance(p, Variable)}
        if not used & _USER_VARIABLES:
            raise QueryError(
                "uses no user variable (%u, %n, %d or %{user}): every login would match "
                "the same rows"
            )
        return Query("".join(self.out), self.driver, tuple(self.arguments))

    def verbatim(self, text: str) -> None:
        self.out.append(self.escape_percent(text))
        self.i += len(text)

    def escape_percent(self, text: str) -> str:
        # PyMySQL formats the query with ``%``: a literal percent sign is written twice.
        return text.replace("%", "%%") if self.driver == "mysql" else text

    def placeholder(self, pieces: tuple[Piece, ...]) -> None:
        self.arguments.append(pieces)
        self.out.append("%s" if self.driver == "mysql" else f"${len(self.arguments)}")

    def literal(self, quote: str) -> None:
        """A quoted string (or a PostgreSQL identifier), from its opening quote."""
        q, start = self.query, self.i
        self.i += 1
        pieces: list[Piece] = []
        text: list[str] = []
        backslash = self.driver == "mysql"
        while True:
            if self.i >= len(q):
                raise QueryError(f"has a {quote} quote that is never closed")
            char = q[self.i]
            if char == quote:
                if q.startswith(quote * 2, self.i):
                    text.append(quote)
                    self.i += 2
                    continue
                self.i += 1
                break
            if char == "\\" and backslash and self.i + 1 < len(q):
                text.append(q[self.i + 1])
                self.i += 2
            elif char == "%":
                piece = self.variable()
                if isinstance(piece, str):
                    text.append(piece)
                else:
                    if text:
                        pieces.append("".join(text))
                        text = []
                    pieces.append(piece)
            else:
                text.append(char)
                self.i += 1
        if not any(isinstance(p, Variable) for p in pieces):
            # No variable: the literal stays as written (its %% now single).
            self.out.append(self.escape_percent(q[start : self.i].replace("%%", "%")))
            return
        if quote == '"' and self.driver == "postgresql":
            raise QueryError(
                "has a variable inside a double-quoted identifier; in PostgreSQL a value is "
                "quoted with ' (e.g. username = '%u')"
            )
        if text:
            pieces.append("".join(text))
        self.placeholder(tuple(pieces))

    def variable(self) -> Piece:
        """The ``%`` sequence at ``self.i``: ``"%"`` for ``%%``, else a :class:`Variable`."""
        q = self.query
        self.i += 1
        if q.startswith("%", self.i):
            self.i += 1
            return "%"
        modifiers = ""
        while self.i < len(q) and q[self.i] in _MODIFIERS:
            modifiers += q[self.i]
            self.i += 1
        if self.i >= len(q):
            raise QueryError("ends with a lone %; write %% for a percent sign")
        char = q[self.i]
        if char == "{":
            end = q.find("}", self.i)
            if end < 0:
                raise QueryError("has a %{ without its closing }")
            name = q[self.i + 1 : end]
            self.i = end + 1
            if ":" in name or "|" in name:
                raise QueryError(f"%{{{name}}}: only plain variables are supported, {_ACCEPTED}")
            if name in _REFUSED:
                raise QueryError(_REFUSED[name])
            if name not in _LONG:
                raise QueryError(f"unknown variable %{{{name}}}; {_ACCEPTED}")
            return Variable(name, modifiers)
        self.i += 1
        if char in _SHORT:
            return Variable(_SHORT[char], modifiers)
        if char in _REFUSED:
            raise QueryError(_REFUSED[char])
        if char.isdigit() or char == "-":
            raise QueryError(f"%{char}...: widths and offsets are not supported; {_ACCEPTED}")
        raise QueryError(
            f"unknown variable or modifier %{modifiers}{char}; {_ACCEPTED} "
            "(write %% for a percent sign)"
        )
