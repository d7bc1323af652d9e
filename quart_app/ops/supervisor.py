"""The supervisor of ``python -m quart_app serve`` with ``workers >= 1``.

Hypercorn 0.18's run() supervises its workers, measured here, like this: on
SIGTERM it sets the workers' shutdown event, waits until the FIRST worker
has exited, then sends SIGTERM to the others, which die at once (a worker
process keeps the default action for SIGTERM). With two workers or more,
only one of them shut down gracefully: requests in flight in the others were
cut, and their shutdown lines never written (tests/e2e/test_logs.py). It
also forgets a failed worker's exit status (pgjones/hypercorn#269).

This one starts the same workers (Hypercorn's own worker function, with the
same shared sockets and shutdown event) and differs where it matters: after
a shutdown signal every worker gets ``graceful_timeout`` (plus a margin) to
finish; only then is one still running terminated. The exit status is the
first non-zero one of any worker (a worker that could not start, or had to
be terminated), else 0. As Hypercorn's: a worker that exits with 0 while
serving is replaced; one that fails stops the server; SIGHUP restarts every
worker gracefully.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from hypercorn.config import Config
from hypercorn.utils import write_pid_file

from quart_app.edge.server_internals import worker_function

# Seconds past graceful_timeout a worker gets to finish its shutdown (its
# app's after_serving steps: stopping background work, closing the pool).
SHUTDOWN_MARGIN_SECONDS = 10.0


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker = worker_function(config)
        self.context = multiprocessing.get_context("spawn")
        self.shutdown_event = self.context.Event()
        self.processes: list[BaseProcess] = []
        self.status = 0
        self.stopping = False
        self.reloading = False

    def run(self) -> int:
        if self.config.pid_path is not None:
            write_pid_file(self.config.pid_path)
        sockets = self.config.create_sockets()
        # The workers inherit SIGINT ignored: a Ctrl-C in a terminal reaches
        # the whole process group, and the supervisor alone decides.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._start_workers(sockets)
            signal.signal(signal.SIGINT, self._stop)
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGHUP, self._reload)
            while not self.stopping:
                wait([process.sentinel for process in self.processes])
                self._collect_exited()
                if self.status != 0:
                    self._stop()
                elif self.reloading:
                    self._wait_for_all(None)
                    self.shutdown_event.clear()
                    self.reloading = False
                    self._start_workers(sockets)
                elif not self.stopping:
                    self._start_workers(sockets)  # replace one that exited cleanly
            self._wait_for_all(self.config.graceful_timeout + SHUTDOWN_MARGIN_SECONDS)
        finally:
            signal.signal(signal.SIGINT, previous)
            for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                sock.close()
        return self.status

    def _start_workers(self, sockets: Any) -> None:
        while len(self.processes) < self.config.workers:
            process = self.context.Process(
                target=self.worker,
                kwargs={
                    "config": self.config,
                    "sockets": sockets,
                    "shutdown_event": self.shutdown_event,
                },
            )
            process.daemon = self.config.daemon
            process.start()
            self.processes.append(process)

    def _stop(self, *_: Any) -> None:
        self.stopping = True
        self.shutdown_event.set()

    def _reload(self, *_: Any) -> None:
        self.reloading = True
        self.shutdown_event.set()

    def _collect_exited(self) -> None:
        for process in [p for p in self.processes if p.exitcode is not None]:
            process.join()
            self._note(process)
            self.processes.remove(process)

    def _note(self, process: BaseProcess) -> None:
        if process.exitcode and self.status == 0:
            self.status = process.exitcode if process.exitcode > 0 else 1

    def _wait_for_all(self, seconds: float | None) -> None:
        """Wait for every worker to exit (for ``seconds`` at most, if given),
        then terminate those still running."""
        deadline = None if seconds is None else time.monotonic() + seconds
        for process in self.processes:
            process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.terminate()
                process.join()
            self._note(process)
        self.processes.clear()


def supervise(config: Config) -> int:
    """Serve with ``config.workers`` (>= 1) worker processes until a
    shutdown signal; the exit status (see the module docstring)."""
    return Supervisor(config).run()
