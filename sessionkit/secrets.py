"""Keeping secrets out of everything sessionkit stores or renders.

The environment snapshot keeps secret-named variables only as ``<redacted>`` (see
:mod:`sessionkit.envinfo`). Everything else a step leaves behind goes through the same
:class:`~sessionkit.envinfo.Redactor` here, with the same marker:

* the values of secret-named environment variables (``GITHUB_TOKEN``, ``HF_TOKEN``, ``*_PASSWORD``...),
  wherever they occur: output tails, logs, summaries, messages;
* credentials in URLs (``https://user:pass@host`` -> ``https://<redacted>@host``);
* command-line arguments that carry a secret: ``--password=xyz``, ``--token xyz``, ``API_KEY=xyz``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from .envinfo import MIN_SECRET_LEN, REDACTED, Redactor, is_secret_name

# Carried between chunks of a stream so that a URL credential cut in two is still found.
_URL_CARRY = 512


_WORDS = re.compile(r"\s+")
# Taken off a value found inside a shell script: quotes, and separators that end a command.
_SHELL_PUNCTUATION = "'\";&|()`"


def _secret_assignment(name: str) -> bool:
    """``API_KEY`` of ``API_KEY=xyz``: an identifier that names a secret."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)) and is_secret_name(name)


def _secret_option(name: str) -> bool:
    """``--password``, ``--api-key``, ``-token``: an option whose name says it holds a secret."""
    bare = name.lstrip("-")
    return bool(bare) and name.startswith("-") and is_secret_name(bare.replace("-", "_"))


class SecretScrubber(Redactor):
    """A :class:`~sessionkit.envinfo.Redactor` that also knows argv and byte streams.

    ``extra`` adds secret values found elsewhere (the secret arguments of a command, so that the
    command's own echo of them is scrubbed from its output as well).
    """

    def __init__(self, environ: Mapping[str, str], extra=()):
        super().__init__(environ)
        values = set(self.secrets) | {v for v in extra if v and len(v) >= MIN_SECRET_LEN}
        self.secrets = sorted(values, key=len, reverse=True)

    @staticmethod
    def argv_secrets(argv: list[str]) -> list[str]:
        """The values that ``argv`` passes in secret options or ``NAME=value`` secrets. An argument
        that holds several words (the script of ``sh -c``) is read word by word the same way, with
        the shell's quotes and separators taken off each value."""
        found = []
        for i, arg in enumerate(argv):
            arg = str(arg)
            if _WORDS.search(arg):
                words = _WORDS.split(arg.strip())
                found += [w.strip(_SHELL_PUNCTUATION) for w in SecretScrubber.argv_secrets(words)]
                continue
            name, sep, value = arg.partition("=")
            if sep and value and (_secret_option(name) or _secret_assignment(name)):
                found.append(value)
            elif not sep and _secret_option(arg) and i + 1 < len(argv):
                found.append(str(argv[i + 1]))
        return [v for v in found if v]

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` with secret option values, ``NAME=value`` secrets and URL credentials replaced."""
        out: list[str] = []
        hide_next = False
        for arg in argv:
            arg = str(arg)
            if hide_next:
                out.append(REDACTED)
                hide_next = False
                continue
            if _WORDS.search(arg):  # several words in one argument (a shell script): word by word
                out.append(self.prose(arg))
                continue
            name, sep, value = arg.partition("=")
            if sep and value and (_secret_option(name) or _secret_assignment(name)):
                core = value.rstrip(_SHELL_PUNCTUATION)  # keep a script's ';' or closing quote
                out.append(f"{name}={REDACTED}{value[len(core):]}")
                continue
            if not sep and _secret_option(arg):
                hide_next = True
            out.append(self.text(arg))
        return out

    def prose(self, value: str) -> str:
        """Free text a user typed (a session's name, objective, outcome, a pattern note): secret
        values and URL credentials replaced as in :meth:`text`, and each word read as in
        :meth:`argv` (``--password=xyz``, ``--token xyz``, ``API_KEY=xyz``); whitespace is kept."""
        parts = re.split(r"(\s+)", self.text(value))
        parts[0::2] = self.argv(parts[0::2])
        return "".join(parts)

    def value(self, value: Any, key: str | None = None) -> Any:
        """Any JSON-like value; lists under an ``argv``/``command`` key are read as argv."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v, k if isinstance(k, str) else None) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if key in ("argv", "command") and all(isinstance(v, str) for v in value):
                return self.argv(list(value))
            return [self.value(v) for v in value]
        return value

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)


class StreamScrubber:
    """Scrubs a byte stream chunk by chunk, holding back just enough bytes that a secret split
    across two chunks is still found. Linear in the stream's length."""

    def __init__(self, redactor: SecretScrubber):
        self.secrets = [s.encode() for s in redactor.secrets]
        self.carry_len = max([len(s) - 1 for s in self.secrets] + [_URL_CARRY])
        self.carry = b""
        self.url = re.compile(rb"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<userinfo>[^/@\s]+)@")

    def _scrub(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        if b"://" not in data:
            return data
        return self.url.sub(lambda m: m.group("scheme") + REDACTED.encode() + b"@", data)

    def feed(self, chunk: bytes) -> bytes:
        """The scrubbed bytes that can be passed on now."""
        data = self._scrub(self.carry + chunk)
        # Only hold back bytes after the last line end that could begin an unfinished secret.
        cut = max(len(data) - self.carry_len, data.rfind(b"\n") + 1, 0)
        self.carry = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        data, self.carry = self._scrub(self.carry), b""
        return data


def current_redactor(environ: Mapping[str, str] | None = None, argv=()) -> SecretScrubber:
    """A scrubber for the secrets of ``environ`` (default: this process's environment) and of the
    command line ``argv``."""
    return SecretScrubber(os.environ if environ is None else environ,
                          SecretScrubber.argv_secrets(list(argv)))


def scrub_prose(value: str | None) -> str | None:
    """``value`` (free text to be stored) with the secrets of this process's environment, URL
    credentials and secret options replaced by ``<redacted>``; None stays None."""
    if value is None:
        return None
    return current_redactor().prose(value)
