"""The development OIDC issuer as its own process, for dragoman's JWKS discovery.

DEV ONLY (it signs a token for anyone who asks); it listens on loopback. The benchmark
asks its ``POST /token`` endpoint for alice's token.

    python bench/issuer.py --port 9003
"""

from __future__ import annotations

import argparse

from dragoman.demo.issuer import DevIssuer
from serving import serve_forever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    issuer = DevIssuer(issuer=f"http://{args.host}:{args.port}")
    serve_forever(issuer.app(), args.host, args.port)


if __name__ == "__main__":
    main()
