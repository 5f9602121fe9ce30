"""What one token verification costs when it is not cached: ``verify_jws`` per token.

Method
------
- Tokens as the benchmark's callers carry them: RS256 from the development issuer (2048-bit
  key, ~800 characters with the usual claims), and ES256 for comparison (an EC issuer, or
  dragoman's own minted tokens checked by the upstream library, which can never cache: each
  token is new).
- Timed: batches of ``--batch`` full verifications (read, header policy, key, signature,
  issuer, audience and time claims) of distinct tokens under ``perf_counter_ns``; each batch
  gives one per-token sample. ``--rounds`` rounds alternate the algorithms.
- Beside it, the same tokens through PyJWT's ``jwt.decode`` with the key given (one reading
  and the signature, PyJWT's own claim checks): the floor of what the library costs.

The inbound verification cache (``identity.verify_cache_ttl``, 60 s by default) means a
caller reusing its token pays this once a minute; with the cache off (the scaling curves of
issuers and keys), or for the minted tokens an upstream verifies, it is paid on every call.

Usage: ``.venv/bin/python bench/verify.py [--rounds 10] [--batch 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import jwt

from dragoman.demo.issuer import DevIssuer
from dragoman.jose.strict import HeaderPolicy, TrustedKey, verify_jws

ISSUER = "https://login.bench.example"
AUDIENCE = "dragoman"
POLICY = HeaderPolicy(
    algorithms=frozenset({"RS256", "ES256"}), accepted_types=frozenset({"at+jwt"})
)


class Keys:
    def __init__(self, issuer: DevIssuer) -> None:
        self._keys = {k["kid"]: TrustedKey.from_jwk(k) for k in issuer.jwks()["keys"]}

    async def key(self, kid: str) -> TrustedKey:
        return self._keys[kid]


def tokens(issuer: DevIssuer, alg: str, count: int) -> list[str]:
    now = int(time.time())
    return [
        issuer.sign(
            {
                "iss": ISSUER,
                "sub": f"user-{i}@bench.example",
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + 3600,
                "account": f"acct-bench-{i}",
                "roles": ["billing_admin"],
                "scope": "payments.read payments.write",
            },
            alg=alg,
        )
        for i in range(count)
    ]


async def dragoman_batch(batch: list[str], keys: Keys) -> float:
    now = time.time()
    started = time.perf_counter_ns()
    for token in batch:
        await verify_jws(
            token,
            policy=POLICY,
            keys=keys,
            issuer=ISSUER,
            audiences={AUDIENCE},
            now=now,
            leeway=30.0,
        )
    return (time.perf_counter_ns() - started) / len(batch) / 1000


def pyjwt_batch(batch: list[str], issuer: DevIssuer, alg: str) -> float:
    key = issuer.rsa_key.public_key() if alg == "RS256" else issuer.ec_key.public_key()
    started = time.perf_counter_ns()
    for token in batch:
        jwt.decode(token, key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)
    return (time.perf_counter_ns() - started) / len(batch) / 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    issuer = DevIssuer(issuer=ISSUER)
    keys = Keys(issuer)
    made = {alg: tokens(issuer, alg, args.batch) for alg in ("RS256", "ES256")}
    print(f"token length: RS256 {len(made['RS256'][0])}, ES256 {len(made['ES256'][0])} chars")
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for alg, batch in made.items():
            samples.setdefault(("verify_jws", alg), []).append(await dragoman_batch(batch, keys))
            samples.setdefault(("jwt.decode", alg), []).append(pyjwt_batch(batch, issuer, alg))
    print(f"{'what':<12} | {'alg':<5} | {'p50 µs':>7} | {'min µs':>7}")
    for (what, alg), values in samples.items():
        print(f"{what:<12} | {alg:<5} | {statistics.median(values):7.1f} | {min(values):7.1f}")


if __name__ == "__main__":
    asyncio.run(main())
