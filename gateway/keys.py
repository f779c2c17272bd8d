"""Reply-token keys: read from the files the configuration names, and created on request.

A key file holds one key as 64 hexadecimal characters (32 random bytes) and nothing else; the first
file of ``secrets.token_key_files`` signs new tokens, the others only verify (rotation). The keys never
stand in the configuration itself, and a missing or unreadable file stops the gateway with the command
that fixes it rather than letting it run with tokens nobody can check.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from gateway.domain.tokens import TokenKeys
from gateway.errors import OperationalError

KEY_BYTES = 32


def load_token_keys(paths: Sequence[Path]) -> TokenKeys:
    """The keys in ``paths`` (first signs); OperationalError naming the file and the fix otherwise."""
    keys: list[bytes] = []
    for path in paths:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise OperationalError(
                f"the reply-token key file {path} does not exist; create it with `gateway secrets init`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise OperationalError(f"cannot read the reply-token key file {path}: {exc}") from exc
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise OperationalError(
                f"the reply-token key file {path} must hold {KEY_BYTES * 2} hexadecimal characters; "
                "write a new one with `gateway secrets new-key FILE`"
            ) from None
        if len(key) < 16:
            raise OperationalError(
                f"the reply-token key in {path} is too short: at least 16 bytes (32 hex digits)"
            )
        keys.append(key)
    return TokenKeys(keys)


def create_token_key(path: Path) -> bool:
    """Write a new random key to ``path`` (mode 0600) unless the file exists; True if it was written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secrets.token_hex(KEY_BYTES) + "\n")
    return True


# A key's id is a MAC of this text under the key: it names the key, and reveals nothing of it (HMAC is
# a pseudo-random function of the key). Distinct from the token MAC's purpose, so no id is ever a token.
_KEY_ID_PURPOSE = b"vorgang-gateway token key id v1\x00"


def key_ids(keys: TokenKeys) -> tuple[str, ...]:
    """An id for each key, in order (the first signs): 16 hexadecimal characters, never the key."""
    return tuple(hmac.new(key, _KEY_ID_PURPOSE, hashlib.sha256).hexdigest()[:16] for key in keys.keys)


def key_fingerprint(keys: TokenKeys) -> str:
    """One fingerprint of the key set, the same on every node with the same keys in the same order."""
    return hashlib.sha256("\n".join(key_ids(keys)).encode("ascii")).hexdigest()[:16]
