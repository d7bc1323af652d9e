"""``python -m quart_app doctor``: the environment check before a rollout.

It checks what a server will depend on, as the server would see it: the
``QUART_APP_*`` settings (and variables it does not know, a misspelt name
being silently ignored otherwise), the database (doctor_database.py), the
storage (doctor_storage.py), the admin key's strength and the clock. One
line per check, ``ok``, ``warn`` or ``FAIL`` with what to do; exit status 0
when nothing failed, 1 otherwise.

It changes nothing a server relies on: it creates no database, migrates
nothing, and the probe files it writes (named like an upload's temp file, so
startup removes one left by a killed run) are removed again.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from quart_app.config import ENV_PREFIX, ConfigError, Settings, load_settings, settings_table
from quart_app.ops.startup import describe_database

OK = "ok"
WARN = "warn"
FAIL = "FAIL"

# Read by the test suite and the benchmark (tests/conftest.py, bench/), never
# by the server: not misspellings.
TOOL_VARIABLES = frozenset(
    {
        "QUART_APP_TEST_DATABASE",
        "QUART_APP_TEST_POSTGRES_URL",
        "QUART_APP_CRASH_SEED",
        "QUART_APP_FUZZ_EXAMPLES",
        "QUART_APP_FUZZ_SEED",
    }
)
# Bits: what an admin key should carry at least, by the estimate below
# ("qa_" + secrets.token_urlsafe(32), what the README suggests, has about 200).
ADMIN_KEY_MIN_BITS = 128
MAKE_KEY = "python -c 'import secrets; print(\"qa_\" + secrets.token_urlsafe(32))'"
# Seconds: how far a clock may be from the database's before it is worth a
# warning, and before it is a failure. Leases (QUART_APP_IMPORT_LEASE_SECONDS),
# link and upload expiry are compared across servers through the database.
CLOCK_WARN_SECONDS = 1.0
CLOCK_FAIL_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    @property
    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def unknown_variables(environ: Mapping[str, str]) -> list[Check]:
    """A warning for each QUART_APP_* variable no setting reads, with the
    closest known name: a misspelt variable is otherwise silently ignored."""
    known = [variable for variable, _, _ in settings_table()]
    checks = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name in TOOL_VARIABLES:
            continue
        # Compared without the prefix, which every name shares.
        close = difflib.get_close_matches(
            name.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1
        )
        hint = (
            f"did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else "remove it, or see README Configuration"
        )
        checks.append(Check("variables", WARN, f"{name} is not a setting (ignored): {hint}"))
    return checks


def key_strength_bits(key: str) -> float:
    """A conservative estimate of the key's entropy: its length, counting
    no character that repeats the one before, continues an ascending run
    ("abc", "123") or ends a four-character stretch seen before ("passpass"),
    times the Shannon entropy of its own characters. Random keys score close
    to their true strength; words repeated, runs and few distinct characters
    score low."""
    if not key:
        return 0.0
    counts = Counter(key)
    per_char = sum(n / len(key) * math.log2(len(key) / n) for n in counts.values())
    seen: set[str] = set()
    predictable = 0
    for i in range(1, len(key)):
        stretch = key[max(0, i - 3) : i + 1]
        if ord(key[i]) - ord(key[i - 1]) in (0, 1) or (len(stretch) == 4 and stretch in seen):
            predictable += 1
        seen.add(stretch)
    return per_char * (len(key) - predictable)


def admin_key_check(settings: Settings) -> Check:
    key = settings.ADMIN_KEY
    if not key:
        return Check(
            "admin key",
            OK,
            f"none from the environment ({ENV_PREFIX}ADMIN_KEY empty): admin keys come "
            "from `python -m quart_app keys create --user 0 --scope admin`",
        )
    bits = key_strength_bits(key)
    if bits < ADMIN_KEY_MIN_BITS:
        return Check(
            "admin key",
            FAIL,
            f"{ENV_PREFIX}ADMIN_KEY looks guessable (about {bits:.0f} bits of "
            f"{ADMIN_KEY_MIN_BITS} wanted: repeats, runs or few distinct characters); "
            f"make a random one with: {MAKE_KEY}",
        )
    return Check("admin key", OK, f"{len(key)} characters, about {bits:.0f} bits")


def configuration_check(settings: Settings) -> Check:
    storage = settings.STORAGE_URL or str(settings.STORAGE_DIR)
    return Check(
        "config",
        OK,
        f"settings load: database {describe_database(settings.database_url)}, "
        f"storage {storage}, uploads up to {settings.MAX_UPLOAD_BYTES} bytes",
    )


async def guarded(
    name: str, patience: float, run: Callable[[], Awaitable[list[Check]]]
) -> list[Check]:
    """The checks ``run`` makes; a check that does not answer within
    ``patience`` seconds, or fails in a way nobody foresaw, is one FAIL line
    rather than a hang or a traceback."""
    try:
        return await asyncio.wait_for(run(), patience)
    except TimeoutError:
        return [Check(name, FAIL, f"no answer within {patience:g} s")]
    except Exception as error:  # a diagnosis reports, whatever it meets
        return [Check(name, FAIL, f"unexpected {type(error).__name__}: {error}")]


async def diagnose(environ: Mapping[str, str]) -> list[Check]:
    """Every check, in the order a server meets what they check."""
    from quart_app.ops.doctor_database import database_checks
    from quart_app.ops.doctor_storage import storage_checks

    checks = unknown_variables(environ)
    try:
        settings = load_settings(environ=environ)
    except ConfigError as error:
        detail = f"{error.cause} (the other checks need settings that load)"
        return [*checks, Check("config", FAIL, detail)]
    checks.append(configuration_check(settings))
    # Each part gets a few database timeouts: clients retry, connections time out.
    patience = max(settings.DATABASE_TIMEOUT, settings.DATABASE_CONNECT_TIMEOUT) * 3
    checks += await guarded("database", patience, lambda: database_checks(settings))
    checks += await guarded("storage", patience, lambda: storage_checks(settings, environ))
    checks.append(admin_key_check(settings))
    return checks


def doctor(environ: Mapping[str, str] | None = None) -> tuple[list[str], bool]:
    """The report's lines, and whether nothing failed."""
    checks = asyncio.run(diagnose(os.environ if environ is None else environ))
    failed = [check for check in checks if check.status == FAIL]
    summary = f"{len(failed)} check(s) failed" if failed else "nothing failed"
    return [*(check.line for check in checks), summary], not failed
