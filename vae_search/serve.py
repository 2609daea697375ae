"""Serving a storage on a port: optuna-dashboard (`vae-search dashboard`) and Optuna's gRPC
storage proxy (`vae-search storage-proxy`). Neither has authentication: a busy port is one line
before any banner, and listening beyond loopback is said before it starts.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from vae_search import storages
from vae_search.errors import UsageError
from vae_search.ui import err


def loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def can_listen(host: str, port: int) -> None:
    """The address is free, or one line says why before anything says it is listening (the
    servers' own messages came after their banners; a race with another program remains)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do
            s.bind((host, port))
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def dashboard(storage_url: str, artifact_dir: Path, host: str, port: int) -> None:
    """optuna-dashboard on the storage as it is (nothing created) and the artifact folder."""
    import optuna_dashboard

    from vae_search.artifacts import artifact_store

    storage = storages.open_storage(storage_url, must_exist=True, heartbeat=None)
    can_listen(host, port)
    try:
        store = artifact_store(artifact_dir, create=False)
    except UsageError as e:  # the studies are still worth a look; their files are not there
        err.print(f"note: {e}; trials' images and weights will not show")
        store = None
    if not loopback(host):
        err.print(f"warning: listening on {host}: optuna-dashboard has no authentication, and anyone who can reach "
                  f"this port can read every study and delete studies, trials' notes and artifacts; keep it on a "
                  "trusted network (or use the default 127.0.0.1 with an SSH tunnel)")
    err.print(f"optuna-dashboard on http://{host}:{port}/ (storage {storages.redact(storage_url)}, artifacts {artifact_dir})")
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    # bottle's run() swallows the KeyboardInterrupt that stops it (Ctrl-C, or SIGTERM through
    # interrupts.py), and serves forever otherwise: stopped, it says so and exits 130 like the proxy.
    raise KeyboardInterrupt


def storage_proxy(storage_url: str, host: str, port: int) -> None:
    """Optuna's gRPC storage proxy in front of a database."""
    if storage_url.lower().startswith("grpc:"):
        raise UsageError("--storage of storage-proxy is the database it serves, not another proxy")
    if storage_url.lower().startswith("journal:"):
        raise UsageError("Optuna's storage proxy serves a database (sqlite, postgresql, mysql), not a journal file")
    # A heartbeat-free storage: nobody beats through the proxy, so the proxy itself must not fail trials as stale.
    backend = optuna.storages.get_storage(storages.open_storage(storage_url, heartbeat=None))
    can_listen(host, port)
    if not loopback(host):
        err.print(f"warning: listening on {host}: the storage proxy has no TLS and no authentication, and anyone who "
                  "can reach this port can read, change and delete every study; keep it on a trusted network")
    err.print(f"Optuna gRPC storage proxy on {host}:{port} for {storages.redact(storage_url)} (Ctrl-C stops it)")
    try:
        optuna.storages.run_grpc_proxy_server(backend, host=host, port=port)
    except RuntimeError as e:  # grpc: "Failed to bind"
        raise UsageError(f"cannot listen on {host}:{port}: {e}") from None
