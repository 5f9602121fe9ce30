"""Provider profiles for ``[[identity.oidc]]``: known issuers' token shapes as defaults.

A profile fills in the settings an operator leaves out; a key set in the table always wins.
Each entry follows the provider's published token format:

- ``google``: Google ID tokens (``gcloud auth print-identity-token``, the metadata server's
  ``identity`` endpoint). ``sub`` is the principal: Google documents it as the account's
  unique, never reused identifier, whereas ``email`` may be absent and can be reused after
  an account is deleted. The Workspace domain ``hd`` is the cloud account (absent for
  service accounts and consumer accounts: no account then).
- ``entra``: Microsoft Entra ID v2.0 access tokens for the operator's own API
  (``accessTokenAcceptedVersion: 2``); ``iss`` names the tenant, so ``tenant`` is needed.
  The client (``azp``) is required: the app registration's own ID tokens have the access
  tokens' ``iss``, ``aud`` and ``typ`` but no ``azp``.
- ``kubernetes``: projected service-account tokens; they carry no ``typ`` header and the
  namespace sits in the nested ``kubernetes.io`` object. The issuer is the cluster's own.
- ``github-actions``: GitHub Actions OIDC tokens; ``sub`` is by default ``repo:OWNER/REPO:...``,
  or ``repo:OWNER@OWNER_ID/REPO@REPO_ID:...`` for repositories on GitHub's immutable subject
  format (the default for repositories created after 2026-07-15), and an organization or
  repository can customize it. The account is the numeric ``repository_owner_id`` (an
  owner's name can be renamed and taken over by someone else, its id cannot). The issuer
  differs for an enterprise with a custom issuer, GHE.com and GHES: set ``issuer`` then.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ProfileName = Literal["google", "entra", "kubernetes", "github-actions"]


@dataclass(frozen=True, slots=True)
class Profile:
    issuer: str | None
    """The fixed issuer (``{tenant}`` is replaced), or None when the operator must name it."""
    defaults: Mapping[str, Any] = field(default_factory=dict)


_JWT = {"algorithms": ["RS256"], "accepted_types": ["jwt"], "allow_missing_type": False}

PROFILES: Mapping[str, Profile] = {
    "google": Profile(
        "https://accounts.google.com",
        {**_JWT, "principal_claim": "sub", "account_claim": "hd", "roles_claim": None},
    ),
    "entra": Profile(
        "https://login.microsoftonline.com/{tenant}/v2.0",
        {
            **_JWT,
            "principal_claim": "oid",
            "account_claim": "tid",
            "roles_claim": "roles",
            # v2 access tokens name their client in azp; ID tokens (same iss, aud and typ
            # when the API's own app registration signs users in) carry none.
            "client_claim": "azp",
            # Continuous access evaluation makes access tokens of up to 28 hours.
            "max_token_lifetime": 30 * 3600.0,
        },
    ),
    "kubernetes": Profile(
        None,
        {
            "algorithms": ["RS256"],
            "accepted_types": ["jwt"],
            "allow_missing_type": True,
            "principal_claim": "sub",
            "account_claim": "/kubernetes.io/namespace",
            "roles_claim": None,
        },
    ),
    "github-actions": Profile(
        "https://token.actions.githubusercontent.com",
        {
            **_JWT,
            "principal_claim": "sub",
            "account_claim": "repository_owner_id",
            "roles_claim": None,
        },
    ),
}


def apply_profile(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (one raw ``[[identity.oidc]]`` table) with its profile's defaults filled in.

    Raises ValueError naming the offending key: an unknown ``profile``, a ``tenant``
    without the entra profile or not a tenant ID, a missing tenant or issuer.
    """
    name = data.get("profile")
    tenant = data.get("tenant")
    if name is None:
        if tenant is not None:
            raise ValueError("tenant: only used with profile = 'entra'")
        return data
    profile = PROFILES.get(name) if isinstance(name, str) else None
    if profile is None:
        raise ValueError(f"profile: unknown profile {name!r}; one of {', '.join(PROFILES)}")
    filled = {**profile.defaults, **data}
    if tenant is not None:
        if profile.issuer is None or "{tenant}" not in profile.issuer:
            raise ValueError(f"tenant: not used by profile {name!r}")
        try:
            tenant_id = str(uuid.UUID(str(tenant)))
        except ValueError:
            raise ValueError(
                "tenant: must be the directory's tenant ID (a GUID), as it appears in `iss`"
            ) from None
        filled["tenant"] = tenant_id
    if "issuer" not in data:
        if profile.issuer is None:
            raise ValueError(f"issuer: profile {name!r} needs the issuer (the cluster's own)")
        if "{tenant}" in profile.issuer:
            if tenant is None:
                raise ValueError(
                    f"tenant: profile {name!r} needs `tenant` (the tenant ID) or an `issuer`"
                )
            filled["issuer"] = profile.issuer.format(tenant=filled["tenant"])
        else:
            filled["issuer"] = profile.issuer
    return filled
