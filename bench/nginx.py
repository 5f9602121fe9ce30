"""nginx (the Debian package) as a reference proxy: its configuration and its command.

Two references share this file:

- **nginx** as a plain reverse proxy: ``proxy_pass`` to the upstream over kept-alive
  connections (``keepalive 64``, HTTP/1.1, ``Connection ""``);
- **nginx + auth_request**: the same, with ``auth_request /_auth`` asking the sidecar
  (``sidecar.py``) first, over kept-alive connections too, and forwarding the token the
  sidecar minted (``auth_request_set $token $upstream_http_x_token``) as the upstream's
  ``Authorization``.

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
    directory: Path, port: int, upstream_port: int, workers: int, sidecar_port: int | None
) -> str:
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers reach the temp dir
    if sidecar_port is None:
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


def command(directory: Path, conf: str) -> list[str]:
    """Write ``conf`` into ``directory`` and return the command that runs nginx on it."""
    binary = find()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(conf, "utf-8")
    return [binary, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(path)]
