"""A sample payment platform, the upstream of the demo and of the tests.

It trusts nothing but dragoman's scoped tokens: every operation verifies its token with
:mod:`dragoman.tokens.verify` for exactly its own scope and the customer in its path, and
(the demo's verifier has a :class:`~dragoman.tokens.replay.MemoryReplayCache`) a token for a
write opens one request only: its replay is refused with ``token_replayed``. It
keeps payment methods (brand and last four digits only; card numbers are never stored)
and billing addresses in memory, publishes its OpenAPI description at ``/openapi.json``,
records every request that reaches it (``seen``), so tests can prove that refused
requests never arrived, and runs a write carrying an ``Idempotency-Key`` once however often
it is retried (:mod:`dragoman.demo.idempotency`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dragoman.audit.redact import luhn_valid
from dragoman.demo.idempotency import IdempotencyKeys
from dragoman.tokens.verify import TokenVerifier, VerifiedToken, verify_aiohttp


@dataclass(frozen=True, slots=True)
class DemoOperation:
    id: str
    method: str
    path: str
    scope: str
    summary: str


OPERATIONS: tuple[DemoOperation, ...] = (
    DemoOperation(
        "customers.get",
        "GET",
        "/v1/customers/{customer_id}",
        "customers:read",
        "Get a customer (its metadata names the cloud account that owns it)",
    ),
    DemoOperation(
        "payment_methods.list",
        "GET",
        "/v1/customers/{customer_id}/payment-methods",
        "payment_methods:list",
        "List payment methods",
    ),
    DemoOperation(
        "payment_methods.create",
        "POST",
        "/v1/customers/{customer_id}/payment-methods",
        "payment_methods:create",
        "Add a payment method",
    ),
    DemoOperation(
        "payment_methods.get",
        "GET",
        "/v1/customers/{customer_id}/payment-methods/{payment_method_id}",
        "payment_methods:read",
        "Get a payment method",
    ),
    DemoOperation(
        "payment_methods.delete",
        "DELETE",
        "/v1/customers/{customer_id}/payment-methods/{payment_method_id}",
        "payment_methods:delete",
        "Delete a payment method",
    ),
    DemoOperation(
        "payment_methods.set_default",
        "PUT",
        "/v1/customers/{customer_id}/default-payment-method",
        "payment_methods:set_default",
        "Make a payment method the default",
    ),
    DemoOperation(
        "billing_address.get",
        "GET",
        "/v1/customers/{customer_id}/billing-address",
        "billing_address:read",
        "Get the billing address",
    ),
    DemoOperation(
        "billing_address.update",
        "PUT",
        "/v1/customers/{customer_id}/billing-address",
        "billing_address:update",
        "Replace the billing address",
    ),
)


def catalog_settings() -> list[dict[str, Any]]:
    """The demo platform's operations as dragoman catalog settings."""
    return [
        {
            "id": op.id,
            "method": op.method,
            "path": op.path,
            "scope": op.scope,
            "customer_param": "customer_id",
        }
        for op in OPERATIONS
    ]


@dataclass
class Customer:
    id: str
    cloud_account: str
    """The owner, kept in the customer's metadata (what registration and reconciliation
    check); an empty string when the metadata names no account."""
    payment_methods: list[dict[str, Any]] = field(default_factory=list)
    billing_address: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    merged_into: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "deleted": self.deleted,
            "merged_into": self.merged_into,
            "metadata": {"cloud_account": self.cloud_account} if self.cloud_account else {},
        }


@dataclass(frozen=True, slots=True)
class Seen:
    """A request that reached the platform, and what its token check said."""

    method: str
    path: str
    accepted: bool
    reason: str | None
    jti: str | None


def _brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or number[:2] in {
        "22",
        "23",
        "24",
        "25",
        "26",
        "27",
    }:
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "card"


def _problem(status: int, code: str, title: str) -> web.HTTPException:
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
    }
    return classes[status](
        text=json.dumps({"type": "about:blank", "title": title, "status": status, "code": code}),
        content_type="application/problem+json",
    )


Handler = Callable[[web.Request, Customer, VerifiedToken], Awaitable[web.StreamResponse]]


class PaymentPlatform:
    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier
        self.customers: dict[str, Customer] = {}
        self.seen: list[Seen] = []
        self.idempotency = IdempotencyKeys()

    def add_customer(self, customer_id: str, cloud_account: str) -> Customer:
        customer = Customer(customer_id, cloud_account)
        self.customers[customer_id] = customer
        return customer

    def seed(self) -> None:
        alice = self.add_customer("cus_alice", "acct-1001")
        alice.payment_methods.append(
            {
                "id": "pm_" + secrets.token_hex(6),
                "brand": "visa",
                "last4": "4242",
                "exp_month": 12,
                "exp_year": 2030,
                "default": True,
            }
        )
        alice.billing_address.update(
            {
                "line1": "1 Market Street",
                "city": "Springfield",
                "postal_code": "12345",
                "country": "US",
            }
        )
        self.add_customer("cus_bob", "acct-2002")

    # -- wiring ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/openapi.json", self._openapi)
        handlers: dict[str, Handler] = {
            "customers.get": self._customer,
            "payment_methods.list": self._list,
            "payment_methods.create": self._create,
            "payment_methods.get": self._get,
            "payment_methods.delete": self._delete,
            "payment_methods.set_default": self._set_default,
            "billing_address.get": self._get_address,
            "billing_address.update": self._put_address,
        }
        for op in OPERATIONS:
            app.router.add_route(op.method, op.path, self._guarded(op, handlers[op.id]))
        app.on_cleanup.append(lambda _: self.verifier.close())
        return app

    def _guarded(
        self, op: DemoOperation, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            customer_id = request.match_info["customer_id"]
            try:
                token = await verify_aiohttp(
                    self.verifier, request, scope=op.scope, customer=customer_id
                )
            except web.HTTPException as exc:
                reason = json.loads(exc.text).get("code") if exc.text else None
                self.seen.append(Seen(request.method, request.path, False, reason, None))
                raise
            self.seen.append(Seen(request.method, request.path, True, None, token.jti))
            customer = self.customers.get(customer_id)
            if customer is None:
                raise _problem(404, "customer_not_found", "No such customer.")
            if op.method == "GET":
                return await handler(request, customer, token)
            return await self.idempotency.run(
                request, customer_id, lambda: handler(request, customer, token)
            )

        return guarded

    # -- operations ------------------------------------------------------------------------

    async def _customer(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        return web.json_response(customer.record())

    async def _list(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        return web.json_response({"data": customer.payment_methods})

    async def _create(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        body = await self._json(request)
        number = "".join(ch for ch in str(body.get("card_number", "")) if ch.isdigit())
        if not 13 <= len(number) <= 19 or not luhn_valid(number):
            raise _problem(400, "card_invalid", "The card number is not valid.")
        try:
            exp_month, exp_year = int(body["exp_month"]), int(body["exp_year"])
        except (KeyError, TypeError, ValueError):
            raise _problem(400, "expiry_invalid", "exp_month and exp_year are required.") from None
        method = {
            "id": "pm_" + secrets.token_hex(6),
            "brand": _brand(number),
            "last4": number[-4:],
            "exp_month": exp_month,
            "exp_year": exp_year,
            "default": not customer.payment_methods,
        }
        customer.payment_methods.append(method)
        return web.json_response(method, status=201)

    def _find(self, customer: Customer, request: web.Request) -> dict[str, Any]:
        wanted = request.match_info["payment_method_id"]
        for method in customer.payment_methods:
            if method["id"] == wanted:
                return method
        raise _problem(404, "payment_method_not_found", "No such payment method.")

    async def _get(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        return web.json_response(self._find(customer, request))

    async def _delete(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        method = self._find(customer, request)
        customer.payment_methods.remove(method)
        if method["default"] and customer.payment_methods:
            customer.payment_methods[0]["default"] = True
        return web.Response(status=204)

    async def _set_default(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        body = await self._json(request)
        wanted = body.get("payment_method_id")
        if not any(m["id"] == wanted for m in customer.payment_methods):
            raise _problem(404, "payment_method_not_found", "No such payment method.")
        for method in customer.payment_methods:
            method["default"] = method["id"] == wanted
        return web.json_response({"default_payment_method": wanted})

    async def _get_address(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        return web.json_response(customer.billing_address)

    async def _put_address(
        self, request: web.Request, customer: Customer, _: VerifiedToken
    ) -> web.StreamResponse:
        body = await self._json(request)
        fields = ("line1", "line2", "city", "postal_code", "country")
        address = {k: str(body[k]) for k in fields if isinstance(body.get(k), str | int)}
        if not address.get("line1") or not address.get("country"):
            raise _problem(400, "address_invalid", "line1 and country are required.")
        customer.billing_address.clear()
        customer.billing_address.update(address)
        return web.json_response(customer.billing_address)

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, LookupError, RecursionError):  # an unknown charset; deep nesting
            raise _problem(400, "body_invalid", "The body must be a JSON object.") from None
        if not isinstance(body, dict):
            raise _problem(400, "body_invalid", "The body must be a JSON object.")
        return body

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


_REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "payment_methods.create": {
        "type": "object",
        "required": ["card_number", "exp_month", "exp_year"],
        "properties": {
            "card_number": {"type": "string"},
            "exp_month": {"type": "integer"},
            "exp_year": {"type": "integer"},
        },
    },
    "payment_methods.set_default": {
        "type": "object",
        "required": ["payment_method_id"],
        "properties": {"payment_method_id": {"type": "string"}},
    },
    "billing_address.update": {"$ref": "#/components/schemas/BillingAddress"},
}
_STATUS = {"POST": "201", "DELETE": "204"}


def openapi_document() -> dict[str, Any]:
    """The platform's OpenAPI 3.1 description, served at ``/openapi.json``: one operation
    per entry of :data:`OPERATIONS` (its id, tag = the scope's resource, request body)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("customer_id", "payment_method_id")
            if "{" + name + "}" in op.path
        ]
        entry: dict[str, Any] = {
            "operationId": op.id,
            "summary": op.summary,
            "tags": [op.scope.split(":")[0]],
            "parameters": params,
            "security": [{"dragoman": [op.scope]}],
            "responses": {_STATUS.get(op.method, "200"): {"description": "OK"}},
        }
        if op.id in _REQUEST_BODIES:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _REQUEST_BODIES[op.id]}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "Demo payment platform", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": {
                "BillingAddress": {
                    "type": "object",
                    "required": ["line1", "country"],
                    "properties": {
                        k: {"type": "string"}
                        for k in ("line1", "line2", "city", "postal_code", "country")
                    },
                }
            },
            "securitySchemes": {
                "dragoman": {
                    "type": "oauth2",
                    "description": "Scoped tokens minted by dragoman, one scope per operation.",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": "https://dragoman.invalid/token",
                            "scopes": {op.scope: op.summary for op in OPERATIONS},
                        }
                    },
                }
            },
        },
    }
