"""Envoy's HTTP ext_authz filter, as its documentation and source describe it, driven by the
shipped deploy/envoy/envoy.yaml (Envoy itself cannot be installed where the tests run).

What is followed (Envoy v3 API, ``envoy.extensions.filters.http.ext_authz.v3``):

- the check request: the caller's method; ``:path`` is ``http_service.path_prefix`` + the
  caller's path and query; the caller's headers matched by ``allowed_headers`` plus Host and
  Authorization (always included); Content-Length is the length of the body sent (0
  without one); a caller's own ``x-envoy-auth-partial-body`` is dropped;
- ``with_request_body``: the body is buffered up to ``max_request_bytes``; beyond it Envoy
  answers 413 itself unless ``allow_partial_message``, in which case the body is cut and
  ``x-envoy-auth-partial-body: true`` is sent (``false`` when whole);
- the answer: 200 is an allow (headers matched by ``allowed_upstream_headers`` replace the
  request's, ``allowed_upstream_headers_to_append`` are appended, the headers named in
  ``x-envoy-auth-headers-to-remove`` are removed, and the request is routed); a 5xx, a
  refused connection or an unreadable answer is an error (``status_on_error`` with an empty
  body unless ``failure_mode_allow``); any other status is a denial (that status, the body,
  and the headers matched by ``allowed_client_headers`` plus status, content-length,
  www-authenticate and location; every header but Host when the list is unset);
- the edge connection manager (``use_remote_address``) appends the caller's address to
  X-Forwarded-For before the filters run and, with ``xff_num_trusted_hops`` 0, sets
  X-Forwarded-Proto to the connection's scheme over the caller's; with
  ``common_http_protocol_options``' ``headers_with_underscores_action`` it drops
  (``DROP_HEADER``) or refuses with 400 (``REJECT_REQUEST``) a request header whose name
  holds an underscore (``ALLOW`` by default);
- the router, after ext_authz (the check request saw the headers as they were), removes
  the virtual host's ``request_headers_to_remove`` from the request and then adds its
  ``request_headers_to_add``; on the upstream's answer it removes
  ``response_headers_to_remove`` and then adds ``response_headers_to_add`` (remove before
  add: Envoy's ``HeaderParser::evaluateHeaders``), each added header by its
  ``append_action`` (``APPEND_IF_EXISTS_OR_ADD`` by default), a value that formats to
  nothing skipped; header values are formatted with the one command operator the shipped
  file uses (``%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%``; any other fails the load). Not
  on local replies (a denial, ``status_on_error``: ``finalizeResponseHeaders`` runs on
  upstream answers, envoyproxy/envoy#11648). The CORS filter, not followed here, adds its
  own Access-Control-* after the router's removals (it is an encoder filter before it).
"""

from __future__ import annotations

import http
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "envoy" / "envoy.yaml"

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"
PARTIAL_BODY = "x-envoy-auth-partial-body"
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class Matcher:
    """An Envoy ``ListStringMatcher`` on header names (``exact``, ``prefix``, ``suffix``,
    ``contains``, each with ``ignore_case``)."""

    patterns: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, node: dict[str, Any] | None) -> Matcher:
        return cls(tuple((node or {}).get("patterns", ())))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def with_names(self, names: Iterable[str]) -> Matcher:
        return Matcher((*self.patterns, *({"exact": name} for name in names)))

    def matches(self, name: str) -> bool:
        return any(_match(pattern, name) for pattern in self.patterns)


def _match(pattern: dict[str, Any], name: str) -> bool:
    fold = bool(pattern.get("ignore_case"))
    subject = name.lower() if fold else name
    for kind, test in (
        ("exact", lambda s, v: s == v),
        ("prefix", str.startswith),
        ("suffix", str.endswith),
        ("contains", lambda s, v: v in s),
    ):
        if kind in pattern:
            value = pattern[kind].lower() if fold else pattern[kind]
            return bool(test(subject, value))
    raise AssertionError(f"matcher kind not followed here: {pattern}")


def _status(node: dict[str, Any] | None) -> int:
    """An ``envoy.type.v3.HttpStatus`` (``code: ServiceUnavailable`` or ``code: 503``);
    Envoy's default is 403."""
    if not node:
        return 403
    code = node["code"]
    if isinstance(code, int):
        return code
    return http.HTTPStatus[re.sub(r"(?<!^)(?=[A-Z])", "_", code).upper()].value


@dataclass(frozen=True)
class ExtAuthzContract:
    """What the shipped configuration tells Envoy to do."""

    path_prefix: str
    decision_cluster: str
    allowed_headers: Matcher
    upstream_headers: Matcher
    upstream_headers_to_append: Matcher
    client_headers: Matcher
    client_headers_on_success: Matcher
    max_request_bytes: int | None
    allow_partial_message: bool
    failure_mode_allow: bool
    status_on_error: int
    route_clusters: tuple[str, ...]
    """Every cluster a route of the public listener can send a request to."""
    response_headers_to_add: tuple[tuple[str, str, str], ...]
    """The virtual host's: (name, value, append_action)."""
    response_headers_to_remove: tuple[str, ...]
    request_headers_to_add: tuple[tuple[str, str, str], ...]
    request_headers_to_remove: tuple[str, ...]
    clusters: dict[str, dict[str, Any]]
    headers_with_underscores: str
    """``ALLOW``, ``DROP_HEADER`` or ``REJECT_REQUEST``."""
    use_remote_address: bool
    xff_num_trusted_hops: int

    @classmethod
    def load(cls, path: Path = SHIPPED) -> ExtAuthzContract:
        config = yaml.safe_load(path.read_text("utf-8"))
        hcm = _only(
            f["typed_config"]
            for listener in config["static_resources"]["listeners"]
            for chain in listener["filter_chains"]
            for f in chain["filters"]
            if f["name"] == HCM
        )
        authz = _only(f["typed_config"] for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ)
        service = authz["http_service"]
        request = service.get("authorization_request", {})
        response = service.get("authorization_response", {})
        # The current field, else the deprecated one under http_service.
        allowed = authz.get("allowed_headers") or request.get("allowed_headers")
        body = authz.get("with_request_body")
        host = _only(hcm["route_config"]["virtual_hosts"])
        _header_changes_on_the_virtual_host_only(hcm["route_config"])
        return cls(
            path_prefix=service.get("path_prefix", ""),
            decision_cluster=service["server_uri"]["cluster"],
            allowed_headers=Matcher.of(allowed),
            upstream_headers=Matcher.of(response.get("allowed_upstream_headers")),
            upstream_headers_to_append=Matcher.of(
                response.get("allowed_upstream_headers_to_append")
            ),
            client_headers=Matcher.of(response.get("allowed_client_headers")),
            client_headers_on_success=Matcher.of(response.get("allowed_client_headers_on_success")),
            max_request_bytes=body["max_request_bytes"] if body else None,
            allow_partial_message=bool(body and body.get("allow_partial_message")),
            failure_mode_allow=bool(authz.get("failure_mode_allow", False)),
            status_on_error=_status(authz.get("status_on_error")),
            route_clusters=tuple(_route_clusters(hcm["route_config"])),
            response_headers_to_add=_headers_to_add(host.get("response_headers_to_add", ())),
            response_headers_to_remove=_names(host.get("response_headers_to_remove", ())),
            request_headers_to_add=_headers_to_add(host.get("request_headers_to_add", ())),
            request_headers_to_remove=_names(host.get("request_headers_to_remove", ())),
            clusters={c["name"]: c for c in config["static_resources"]["clusters"]},
            headers_with_underscores=hcm.get("common_http_protocol_options", {}).get(
                "headers_with_underscores_action", "ALLOW"
            ),
            use_remote_address=bool(hcm.get("use_remote_address", False)),
            xff_num_trusted_hops=int(hcm.get("xff_num_trusted_hops", 0)),
        )

    def check_header_allowed(self, name: str) -> bool:
        # Always included for an HTTP authorization server, whatever the list says.
        return name in ("authorization", "host") or self.allowed_headers.matches(name)

    def client_header_on_denial(self, name: str) -> bool:
        if not self.client_headers:
            return name != "host"
        defaults = ("content-length", "www-authenticate", "location")
        return name in defaults or self.client_headers.matches(name)


HEADER_CHANGES = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)
# Envoy refuses to change these through the header lists.
UNCHANGEABLE = ("host",)
DOWNSTREAM_ADDRESS = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"


def _header_changes_on_the_virtual_host_only(route_config: dict[str, Any]) -> None:
    """Header lists are followed on the virtual host only: one elsewhere (the route
    configuration, a route, a weighted cluster) fails the load instead of being ignored."""
    places = [route_config]
    for host in route_config["virtual_hosts"]:
        for route in host["routes"]:
            places.append(route)
            action = route.get("route", {})
            places.extend(action.get("weighted_clusters", {}).get("clusters", ()))
    for place in places:
        for key in HEADER_CHANGES:
            assert key not in place, f"{key} outside the virtual host is not followed here"


def _names(names: Iterable[str]) -> tuple[str, ...]:
    found = tuple(name.lower() for name in names)
    for name in found:
        assert not name.startswith(":") and name not in UNCHANGEABLE, name
    return found


def _headers_to_add(entries: Iterable[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    found = tuple(
        (
            entry["header"]["key"].lower(),
            entry["header"]["value"],
            entry.get("append_action", "APPEND_IF_EXISTS_OR_ADD"),
        )
        for entry in entries
    )
    _names(name for name, _, _ in found)
    for _, value, _ in found:
        _format(value, "192.0.2.1")  # an operator not followed here fails the load
    return found


def _format(value: str, remote: str) -> str:
    """A header value with Envoy's command operators replaced (``%%`` is a ``%``)."""
    out, rest = [], value
    while "%" in rest:
        before, _, rest = rest.partition("%")
        out.append(before)
        if rest.startswith("%"):
            out.append("%")
            rest = rest[1:]
            continue
        operator, found, rest = rest.partition("%")
        assert found and f"%{operator}%" == DOWNSTREAM_ADDRESS, f"not followed here: {value}"
        out.append(remote)
    out.append(rest)
    return "".join(out)


def _change_headers(
    headers: CIMultiDict[str],
    remove: Iterable[str],
    add: Iterable[tuple[str, str, str]],
    remote: str,
) -> None:
    """Envoy's ``HeaderParser::evaluateHeaders``: remove, then add by ``append_action``."""
    for name in remove:
        headers.popall(name, None)
    for name, template, action in add:
        value = _format(template, remote)
        if not value:
            continue  # keep_empty_value is false by default
        present = name in headers
        if action == "ADD_IF_ABSENT" and present:
            continue
        if action == "OVERWRITE_IF_EXISTS" and not present:
            continue
        if action.startswith("OVERWRITE"):
            headers.popall(name, None)
        headers.add(name, value)


def _only(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    found = list(items)
    assert len(found) == 1, f"expected exactly one, found {len(found)}"
    return found[0]


def _route_clusters(route_config: dict[str, Any]) -> Iterable[str]:
    for host in route_config["virtual_hosts"]:
        for route in host["routes"]:
            action = route.get("route")
            if action is None:
                continue  # a redirect or a direct response reaches no cluster
            assert "cluster_header" not in action, "a caller must not choose the cluster"
            if "cluster" in action:
                yield action["cluster"]
            for weighted in action.get("weighted_clusters", {}).get("clusters", ()):
                yield weighted["name"]


class EnvoyGateway:
    """The listener of the shipped configuration: ext_authz against ``decision_url``, then
    the router to ``upstream_url``."""

    def __init__(self, contract: ExtAuthzContract, decision_url: str, upstream_url: str) -> None:
        self.contract = contract
        self.decision_url = decision_url.rstrip("/")
        self.upstream_url = upstream_url.rstrip("/")
        self.checks: list[CIMultiDict[str]] = []
        """The headers of every check request sent to the decision listener."""
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)  # Envoy's own limit is the contract's
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _close(self, _: web.Application) -> None:
        assert self._session is not None
        await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        contract = self.contract
        body = await request.read() if request.body_exists else b""
        headers = CIMultiDict(request.headers)
        # The connection manager, before any filter: headers with an underscore in their
        # name are dropped or refused, and the caller's address is appended.
        if any("_" in name for name in headers):
            if contract.headers_with_underscores == "REJECT_REQUEST":
                return web.Response(status=400, text="Bad Request")
            if contract.headers_with_underscores == "DROP_HEADER":
                headers = CIMultiDict((k, v) for k, v in headers.items() if "_" not in k)
        if contract.use_remote_address:
            forwarded = ", ".join([*headers.getall("X-Forwarded-For", []), request.remote or ""])
            headers.popall("X-Forwarded-For", None)
            headers["X-Forwarded-For"] = forwarded
            if contract.xff_num_trusted_hops == 0 or "X-Forwarded-Proto" not in headers:
                headers.popall("X-Forwarded-Proto", None)
                headers["X-Forwarded-Proto"] = request.scheme

        sent, partial = body, None
        if contract.max_request_bytes is not None and body:
            if len(body) > contract.max_request_bytes:
                if not contract.allow_partial_message:
                    return web.Response(status=413, text="Payload Too Large")
                sent = body[: contract.max_request_bytes]
            partial = "true" if len(sent) != len(body) else "false"
        else:
            sent = b""
        check = CIMultiDict[str]()
        for name, value in headers.items():
            key = name.lower()
            if key in ("content-length", PARTIAL_BODY) or key in HOP_BY_HOP:
                continue
            if contract.check_header_allowed(key):
                check.add(key, value)
        if partial is not None and contract.check_header_allowed(PARTIAL_BODY):
            check[PARTIAL_BODY] = partial
        check["content-length"] = str(len(sent))
        self.checks.append(check)

        answer = await self._ask(
            request.method, contract.path_prefix + request.raw_path, check, sent
        )
        if answer is None or answer[0] >= 500:
            if not contract.failure_mode_allow:
                return web.Response(status=contract.status_on_error)
            return await self._forward(request, headers, body, CIMultiDict(), ())
        status, answer_headers, answer_body = answer
        if status == 200:
            remove = [
                name.strip().lower()
                for value in answer_headers.getall(HEADERS_TO_REMOVE, [])
                for name in value.split(",")
                if name.strip()
            ]
            answer_headers.popall(HEADERS_TO_REMOVE, None)
            return await self._forward(request, headers, body, answer_headers, remove)
        return self._deny(status, answer_headers, answer_body)

    async def _ask(
        self, method: str, path: str, headers: CIMultiDict[str], body: bytes
    ) -> tuple[int, CIMultiDict[str], bytes] | None:
        assert self._session is not None
        url = URL(self.decision_url + path, encoded=True)
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            ) as response:
                return response.status, CIMultiDict(response.headers), await response.read()
        except aiohttp.ClientError:
            return None

    async def _forward(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        body: bytes,
        answer: CIMultiDict[str],
        remove: Iterable[str],
    ) -> web.StreamResponse:
        contract = self.contract
        upstream = CIMultiDict(
            (k, v)
            for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        )
        for name in {k.lower() for k in answer if contract.upstream_headers.matches(k.lower())}:
            upstream.popall(name, None)
            for value in answer.getall(name):
                upstream.add(name, value)
        for name, value in answer.items():
            if contract.upstream_headers_to_append.matches(name.lower()):
                upstream.add(name, value)
        for name in remove:
            if name not in ("host", ":authority", ":path", ":method"):
                upstream.popall(name, None)
        # The router, after every filter: the virtual host's request header lists.
        _change_headers(
            upstream,
            contract.request_headers_to_remove,
            contract.request_headers_to_add,
            request.remote or "",
        )
        assert self._session is not None
        url = URL(self.upstream_url + request.raw_path, encoded=True)
        async with self._session.request(
            request.method,
            url,
            headers=upstream,
            data=body if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        ) as response:
            payload = await response.read()
            answered = CIMultiDict(
                (name, value)
                for name, value in response.headers.items()
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
            )
        # The router (finalizeResponseHeaders), then ext_authz's encoder on the way out.
        _change_headers(
            answered,
            contract.response_headers_to_remove,
            contract.response_headers_to_add,
            request.remote or "",
        )
        for name, value in answer.items():
            if contract.client_headers_on_success.matches(name.lower()):
                answered.add(name, value)
        out = web.Response(status=response.status, body=payload)
        out.headers.extend(answered)
        return out

    def _deny(self, status: int, answer: CIMultiDict[str], body: bytes) -> web.Response:
        # sendLocalReply: a non-empty body defaults to text/plain, then the allowed headers of
        # the answer replace the reply's own.
        out = web.Response(status=status, body=body)
        if body:
            out.headers["Content-Type"] = "text/plain"
        for name in {k.lower() for k in answer}:
            if name == "content-length" or not self.contract.client_header_on_denial(name):
                continue
            out.headers.popall(name, None)
            for value in answer.getall(name):
                out.headers.add(name, value)
        return out
