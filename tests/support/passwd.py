"""Dovecot-format passwd files: ``user:{SCHEME}hash:uid:gid::home::``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from passlib.hash import sha512_crypt


@dataclass(frozen=True)
class PasswdUser:
    name: str
    password: str
    scheme: str = "PLAIN"  # "PLAIN" or "SHA512-CRYPT"
    home: str = ""


DEFAULT_USERS: tuple[PasswdUser, ...] = (
    PasswdUser("alice", "alice-secret"),
    PasswdUser("bob", "bob secret with spaces", scheme="SHA512-CRYPT"),
    PasswdUser("carol@example.org", "carol-secret"),
)


def password_field(user: PasswdUser) -> str:
    if user.scheme == "PLAIN":
        return "{PLAIN}" + user.password
    if user.scheme == "SHA512-CRYPT":
        hashed: str = sha512_crypt.using(rounds=5000).hash(user.password)  # passlib is untyped
        return "{SHA512-CRYPT}" + hashed
    raise ValueError(f"no test hasher for {user.scheme}")


def write_passwd(path: Path, users: tuple[PasswdUser, ...] | list[PasswdUser]) -> Path:
    uid, gid = os.getuid(), os.getgid()
    lines = [f"{u.name}:{password_field(u)}:{uid}:{gid}::{u.home}::\n" for u in users]
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o600)
    return path
