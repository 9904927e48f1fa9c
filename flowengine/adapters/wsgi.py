"""Run WSGI applications under waitress in a background thread.

The demo, `flowengine serve` and the tests start their servers this way, so
every server that flowengine runs is a production WSGI server.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

logger = logging.getLogger(__name__)


class BackgroundServer:
    """A waitress server on one loopback address, served from a thread.

    Args:
        app: the WSGI application.
        host: the address to bind; the default is loopback only.
        port: the TCP port, or 0 for a free port chosen by the system.
        threads: worker threads that run requests.
        connection_limit: open connections, idle keep-alive ones included,
            beyond which the server stops accepting (waitress's default of
            100 stalls a load of more than 100 keep-alive clients).
        name: a label for log lines.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 8,
        connection_limit: int = 1000,
        name: str = "server",
    ) -> None:
        self.name = name
        # The waitress stubs lack the attributes used here, so the server is Any.
        try:
            server: Any = create_server(
                app,
                host=host,
                port=port,
                threads=threads,
                connection_limit=connection_limit,
                ident=f"flowengine {name}",
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{name} cannot listen on {host}:{port} ({exc.strerror}); stop the "
                "program that uses the port or choose another one",
            ) from exc
        self._server = server
        self.host = host
        self.port: int = self._server.effective_port
        self._stopped = False
        self._thread = threading.Thread(
            target=self._server.run, name=f"flowengine-{name}", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL, such as http://127.0.0.1:9001."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Start serving in the background and return self."""
        self._thread.start()
        logger.info("%s listening on %s", self.name, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests, close connections and join the thread.

        Stopping a server that is already stopped does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        self._server.task_dispatcher.shutdown(timeout=int(timeout))
        server_map = self._server._map
        if self._thread.ident is None:
            # Never started: no server thread can race with the close.
            wasyncore.close_all(server_map)
            return
        # The sockets are closed inside the server thread: closing them from
        # here races with its poll() and raises "Bad file descriptor".
        try:
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(server_map))
        except OSError:
            # The loop already closed its trigger while shutting down, so
            # nothing races with closing the remaining sockets here.
            wasyncore.close_all(server_map)
        self._thread.join(timeout)
        logger.info("%s stopped", self.name)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        self._server.run()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
