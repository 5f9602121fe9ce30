"""nginx (the Debian package) as a reference proxy: its configuration and its command.

Two references share this file:

- **nginx** as a plain reverse proxy: ``proxy_pass`` to the upstream over kept-alive
  connections (``keepalive 64``, HTTP/1.1, ``Connection ""``);
- **nginx + auth_request**: the same, with ``auth_request /_auth`` asking the sidecar
  (``sidecar.py``) first, over kept-alive connections too, and forwarding the token the
  sidecar minted (``auth_request_set $token $upstream_http_x_token``) as the upstream's
  ``Authorization``;
- **nginx + dragoman decision API**: the same shape, asking dragoman's decision listener
  (``[decision]``, ``/auth_request``) with ``X-Original-Method``, ``X-Original-URI`` and
  ``X-Forwarded-For``, no body (``proxy_pass_request_body off``, ``Content-Length ""``),
  and forwarding what dragoman answered: its minted token as ``Authorization`` (the
  caller's is replaced) and its ``X-Request-Id``; the caller's ``Cookie`` and
  ``X-CSRF-Token`` are not forwarded (as dragoman's proxy mode drops them). A denial's
  ``X-Dragoman-Problem`` is added to nginx's 401/403 so that a failed check shows why.
  Written here for the benchmark, independent of the configuration shipped in
  deploy/nginx/ (which also turns a denial into dragoman's problem+json).

nginx runs in the foreground (``daemon off``) with a master and ``worker_processes``
workers, everything it writes (pid, error log, temp paths) in its own directory, no
access log. ``GET /livez`` goes straight to the upstream (the readiness poll).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NGINX = os.environ.get("DRAGOMAN_BENCH_NGINX", "/usr/sbin/nginx")

_PROXY = """proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


def find() -> str | None:
    """The nginx binary, or None when it is not installed."""
    if Path(NGINX).exists():
        return NGINX
    return shutil.which("nginx")


def config(
    directory: Path,
    port: int,
    upstream_port: int,
    workers: int,
    sidecar_port: int | None,
    *,
    decision_port: int | None = None,
) -> str:
    """nginx.conf: a plain reverse proxy; with ``sidecar_port``, auth_request to the sidecar;
    with ``decision_port``, auth_request to dragoman's decision listener."""
    if sidecar_port is not None and decision_port is not None:
        raise ValueError("auth_request asks either the sidecar or dragoman, not both")
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers reach the temp dir
    if decision_port is not None:
        main, upstreams = _decision(decision_port)
    elif sidecar_port is None:
        main = f"""location / {{
            {_PROXY}
        }}"""
        upstreams = ""
    else:
        main = f"""location / {{
            auth_request /_auth;
            auth_request_set $token $upstream_http_x_token;
            proxy_set_header Authorization "Bearer $token";
            {_PROXY}
        }}
        location = /_auth {{
            internal;
            proxy_pass http://sidecar;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
        upstreams = f"""
    upstream sidecar {{
        server 127.0.0.1:{sidecar_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    return f"""# Written by bench/nginx.py for one benchmark run.
{user}daemon off;
master_process on;
worker_processes {workers};
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}{upstreams}
    server {{
        listen 127.0.0.1:{port};
        location = /livez {{
            {_PROXY}
        }}
        {main}
    }}
}}
"""


def _decision(decision_port: int) -> tuple[str, str]:
    """The locations and upstream block of auth_request to dragoman's decision API."""
    main = f"""location / {{
            auth_request /_dragoman;
            auth_request_set $dragoman_authorization $upstream_http_authorization;
            auth_request_set $dragoman_request_id $upstream_http_x_request_id;
            auth_request_set $dragoman_problem $upstream_http_x_dragoman_problem;
            add_header X-Dragoman-Problem $dragoman_problem always;
            proxy_set_header Authorization $dragoman_authorization;
            proxy_set_header X-Request-Id $dragoman_request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Cookie "";
            proxy_set_header X-CSRF-Token "";
            {_PROXY}
        }}
        location = /_dragoman {{
            internal;
            proxy_pass http://dragoman_decision/auth_request;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
    upstreams = f"""
    upstream dragoman_decision {{
        server 127.0.0.1:{decision_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    return main, upstreams


def command(directory: Path, conf: str) -> list[str]:
    """Write ``conf`` into ``directory`` and return the command that runs nginx on it."""
    binary = find()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(conf, "utf-8")
    return [binary, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(path)]
