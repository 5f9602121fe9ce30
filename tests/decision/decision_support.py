"""What the decision listener's tests share: alice's credentials and the audit records."""

from __future__ import annotations

import json
from typing import Any

from dragoman.demo.runner import DemoStack


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


def audit(stack: DemoStack) -> list[dict[str, Any]]:
    lines = (stack.state_dir / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
