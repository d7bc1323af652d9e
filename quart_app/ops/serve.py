"""``python -m quart_app serve``: Hypercorn with hypercorn.toml, made to fail
loudly.

``hypercorn -c hypercorn.toml 'quart_app:create_app()'`` printed tracebacks
and exited 0 when the app could not start, so systemd and container runtimes
saw a clean exit (measured on Hypercorn 0.18). Two causes:

- run() in a supervisor with workers >= 1 loses a failed worker's exit
  status: its last _join_exited() runs over the already emptied list of
  workers and returns 0 (pgjones/hypercorn#269; the fix proposed in #372
  is not merged); and it shuts down only the first worker gracefully
  (ops/supervisor.py, which this command uses instead). With ``workers = 0``
  (hypercorn.toml) the one process serves, and an app that cannot start
  ends it with status 1.
- the app's failures were plain exceptions, printed with tracebacks by
  Quart, Hypercorn and multiprocessing; they are StartupErrors now
  (startup.py): one line, status 1, whichever command started the app.

This command adds what the plain one cannot do: it checks the settings, the
storage and instance directories, the database (creating and migrating it
with QUART_APP_AUTO_MIGRATE) and the bind before any worker starts, gives the
workers an empty directory to add their metrics up in (ops/metrics_directory.py),
logs one line saying what it serves, and exits non-zero when a worker fails to start even
with workers >= 1. Exit status: 0 after a shutdown signal, 2 for a bad
setting or Hypercorn config, 1 when anything else stops startup.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import sys
import tomllib
from pathlib import Path

from hypercorn.config import Config

from quart_app.config import ConfigError, Settings, load_settings
from quart_app.edge.access_log import configure_logging
from quart_app.ops.instance import load_secret_key, prepare_directories
from quart_app.ops.lifecycle import database_kind, package_version, storage_kind
from quart_app.ops.metrics_directory import metrics_directory
from quart_app.ops.opening import open_database, open_store
from quart_app.ops.startup import StartupError, describe_database, startup_step
from quart_app.ops.supervisor import supervise

APPLICATION = "quart_app:create_app()"
log = logging.getLogger("quart_app.serve")


def hypercorn_config(path: Path, binds: list[str], workers: int | None) -> Config:
    """hypercorn.toml, with the command line's --bind and --workers on top."""
    try:
        config = Config.from_toml(path)
    except FileNotFoundError:
        raise ConfigError(f"no Hypercorn config at {path.absolute()} (give --config)") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"Hypercorn config {path.absolute()}: {error}") from None
    if binds:
        config.bind = binds
    if workers is not None:
        config.workers = workers
    config.application_path = APPLICATION
    return config


async def preflight(settings: Settings) -> str | None:
    """What the app's startup needs, checked (and prepared) before any
    worker starts; the schema revision. Raises StartupError."""
    await open_store(settings)
    with startup_step(f"instance directory {settings.INSTANCE_DIR}"):
        prepare_directories(settings)
        load_secret_key(settings)
    database, revision = await open_database(settings)
    await database.dispose()
    return revision


def check_binds(config: Config) -> None:
    """Bind every address once (and let go), so that a taken port is a
    StartupError here. Inherited descriptors (fd://) are left alone."""
    probe = copy.copy(config)
    for name in ("bind", "insecure_bind", "quic_bind"):
        setattr(probe, name, [b for b in getattr(config, name) if not b.startswith("fd://")])
    with startup_step(f"cannot listen on {', '.join(config.bind)}"):
        sockets = probe.create_sockets()
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets]:
        sock.close()


def run_hypercorn(config: Config) -> int:
    if config.workers >= 1 and not config.use_reloader:
        return supervise(config)  # every worker shut down gracefully (ops/supervisor.py)
    from hypercorn.run import run

    status: int = run(config)
    return status


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quart_app serve", description="Run the server with Hypercorn."
    )
    parser.add_argument(
        "--config", type=Path, default=Path("hypercorn.toml"), help="default: ./hypercorn.toml"
    )
    parser.add_argument("--bind", action="append", default=[], help="overrides the config's")
    parser.add_argument("--workers", type=int, help="overrides the config's")
    args = parser.parse_args(argv)
    try:
        config = hypercorn_config(args.config, args.bind, args.workers)
        settings = load_settings()
        configure_logging(settings.LOG_LEVEL)
        revision = asyncio.run(preflight(settings))
        check_binds(config)
        with metrics_directory(settings) as metrics_dir:
            log.info(
                "starting: database %s, storage %s, schema revision %s, bind %s",
                describe_database(settings.database_url),
                settings.STORAGE_URL or settings.STORAGE_DIR,
                revision,
                " ".join(config.bind),
                extra={
                    "version": package_version(),
                    "database": describe_database(settings.database_url),
                    "database_kind": database_kind(settings),
                    "storage": settings.STORAGE_URL or str(settings.STORAGE_DIR),
                    "storage_kind": storage_kind(settings),
                    "schema_revision": revision,
                    "bind": config.bind,
                    "insecure_bind": config.insecure_bind,
                    "tls": config.ssl_enabled,
                    "workers": config.workers,
                    "metrics_dir": str(metrics_dir),
                },
            )
            return run_hypercorn(config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except StartupError as error:  # from the preflight, or the app in this process
        print(error, file=sys.stderr)
        return 1
