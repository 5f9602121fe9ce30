"""`dragoman reconcile` as a real subprocess, against the demo stack served by the test
(real HTTP; SQLite and PostgreSQL): the summary and the JSON report, exit statuses, a
`kill -9` mid-run then `--resume` (nothing re-checked, no alert twice), Ctrl-C, a second
runner refused, a platform outage, and the progress bar on a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dragoman.demo.runner import DemoStack, demo_settings, write_toml
from reconcile_support import (
    Gate,
    Planted,
    asked,
    customer_of,
    rows_by_id,
    seed,
    start_platform,
    start_stack,
    stop_platform,
)

DRAGOMAN = Path(sys.executable).with_name("dragoman")
ALERT_LINE = re.compile(r"alert mapping_drift (\{.*\})")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}


async def start_cli(config: Path, *args: str, **options: Any) -> asyncio.subprocess.Process:
    # Asynchronous: the platform the command talks to is served by this test's event loop.
    return await asyncio.create_subprocess_exec(
        str(DRAGOMAN),
        "reconcile",
        "-c",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=options.pop("stderr", asyncio.subprocess.PIPE),
        env={**_env(), **options.pop("env", {})},
        cwd=config.parent,
        **options,
    )


async def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await start_cli(config, *args, env=env or {})
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def exited(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Its output once it exits. Not out within 30 s (this failed once in a full run, and
    never alone): what each of its tasks waits for is asked (SIGUSR1) and shown, as a
    warning when it then exits within 30 s more, in the failure when it does not."""
    talk = asyncio.ensure_future(process.communicate())
    done, _ = await asyncio.wait({talk}, timeout=30)
    if done:
        return talk.result()
    process.send_signal(signal.SIGUSR1)
    done, _ = await asyncio.wait({talk}, timeout=30)
    if not done:
        process.kill()
    out, err = await talk
    tasks = err.decode(errors="replace").partition("dragoman reconcile:")[2]
    assert done, f"not out 60 s after the signal; its tasks then:\n{tasks}"
    warnings.warn(f"slow to exit (30-60 s); its tasks at 30 s:\n{tasks}", stacklevel=2)
    return out, err


def alerted(stderr: str) -> list[str]:
    """Mapping ids of the alerts the log sink printed."""
    return [json.loads(m.group(1))["fields"]["mapping_id"] for m in ALERT_LINE.finditer(stderr)]


class Env:
    def __init__(self, stack: DemoStack, config: Path, gate: Gate) -> None:
        self.stack = stack
        self.config = config
        self.gate = gate

    @property
    def store(self) -> Any:
        assert self.stack.proxy is not None
        return self.stack.proxy.store

    async def checkpointed(self) -> set[str]:
        return {m for m, row in (await rows_by_id(self.store)).items() if row.last_reconcile_run}


@pytest.fixture
async def env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    """The demo stack (its platform behind a gate) and a settings file for the command that
    points at the same state store, platform and keys."""
    overrides: dict[str, Any] = {
        "store": {"database_url": database_url},
        "reconcile": {"schedule": False, "batch_size": 50, "concurrency": 4},
    }
    gate = Gate()
    stack = await start_stack(tmp_path / "stack", overrides, gate=gate)
    data = demo_settings(state_dir=stack.state_dir, **stack.urls)
    for table, values in overrides.items():
        data.setdefault(table, {}).update(values)
    config = tmp_path / "reconcile.toml"
    write_toml(data, config)
    yield Env(stack, config, gate)
    gate.open.set()
    await stack.stop()


async def test_a_run_with_drift_completes_and_writes_its_report(env: Env, tmp_path: Path) -> None:
    planted = await seed(env.store, env.stack.platform, 300, every=30)
    report_path = tmp_path / "out" / "report.json"

    code, out, err = await cli(env.config, "--report", str(report_path))

    assert code == 0, err
    assert "completed" in out and f"report written to {report_path}" in out
    report = json.loads(report_path.read_text())
    assert report["status"] == "completed" and report["total"] == 300
    assert report["outcomes"]["checked"] == 300 and report["outcomes"]["matched"] == 290
    assert report["outcomes"]["alerts"] == 10 and sum(report["drift"].values()) == 10
    assert report["errors"] == 0 and report["duration_seconds"] > 0
    assert sorted(alerted(err)) == sorted(planted.drift)  # one alert each, on stderr
    assert "reconciling: 300/300 (100%)" in err  # plain progress lines (not a terminal)
    assert "cus_" not in err + out and "acct-" not in err + out


async def test_a_run_records_every_mapping_started_then_ok_in_the_shared_chain(env: Env) -> None:
    """The command writes each batch's records in one write to the audit file the proxy
    writes too: every mapping recorded ``started`` and ``ok``, and the chain verifies."""
    await seed(env.store, env.stack.platform, 120, every=30)

    code, _, err = await cli(env.config)

    assert code == 0, err
    log = env.stack.state_dir / "audit.jsonl"
    recorded = [
        record
        for record in map(json.loads, log.read_text().splitlines())
        if record.get("action") == "reconcile"
    ]
    started = [r["mapping_id"] for r in recorded if r["outcome"] == "started"]
    ok = [r["mapping_id"] for r in recorded if r["outcome"] == "ok"]
    assert len(started) == len(set(started)) == 120
    assert sorted(ok) == sorted(started)
    verified = subprocess.run(
        [str(DRAGOMAN), "audit", "verify", str(log)],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


# SQLite is a file on this host: its clock is the host's, nothing to measure.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_run_from_a_host_whose_clock_is_off_the_stores_asks_the_platform_nothing(
    env: Env, database_url: str
) -> None:
    """The run's tokens go by this host's clock: measured against the key store first, as
    a serving instance does, none is signed past keys.max_clock_skew."""
    await seed(env.store, env.stack.platform, 3)
    skewed = Path(__file__).with_name("skewed_clock")

    code, _, err = await cli(
        env.config, env={"PYTHONPATH": str(skewed), "SKEWED_CLOCK_OFFSET": "120"}
    )

    assert code != 0, err
    assert asked(env.stack) == []


async def test_kill_9_mid_run_then_resume_rechecks_nothing_and_alerts_once(env: Env) -> None:
    planted: Planted = await seed(env.store, env.stack.platform, 1000, every=50)
    customers = {m: customer_of(i) for i, m in enumerate(planted.ids)}
    process = await start_cli(env.config)
    stderr = asyncio.create_task(process.stderr.read())  # type: ignore[union-attr]
    while len(env.stack.platform.seen) < 400:
        await asyncio.sleep(0.01)
    env.gate.open.clear()  # the platform stops answering: the command waits on lookups
    done = await _settled(env)
    os.kill(process.pid, signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    first_err = (await stderr).decode()
    # The killed command's last lookups (held at the gate) now reach the platform, each
    # recorded once, answered to nobody.
    held, since = env.gate.waiting, len(env.stack.platform.seen) + env.gate.waiting
    env.gate.open.set()
    while len(env.stack.platform.seen) < since:
        await asyncio.sleep(0.01)
    assert held == 4 and 0 < len(done) < 1000

    code, out, err = await cli(env.config, "--resume")

    assert code == 0, err
    assert "resumed (session 2)" in out and "checked 1000" in out
    assert sorted(asked(env.stack, since)) == sorted(customers[m] for m in set(customers) - done)
    assert sorted(alerted(first_err) + alerted(err)) == sorted(planted.drift)


async def _settled(env: Env) -> set[str]:
    """Checkpoints once the command has written all it can (every lookup held)."""
    last: set[str] = set()
    stable = 0
    while stable < 15:
        await asyncio.sleep(0.1)
        now = await env.checkpointed()
        stable = stable + 1 if now == last and env.gate.waiting == 4 else 0
        last = now
    return last


async def test_ctrl_c_keeps_what_was_checked_and_resume_finishes(env: Env) -> None:
    await seed(env.store, env.stack.platform, 400)
    process = await start_cli(env.config)
    while len(env.stack.platform.seen) < 150:
        await asyncio.sleep(0.01)
    env.gate.open.clear()
    while env.gate.waiting < 4:
        await asyncio.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = await exited(process)
    assert process.returncode == 130, err
    assert "--resume" in err.decode()
    assert len(await env.checkpointed()) >= 140  # checked before Ctrl-C: written on the way out
    env.gate.open.set()
    code, out, _ = await cli(env.config)  # without --resume, the unfinished run continues
    assert code == 0 and "resumed" in out and "checked 400" in out


async def test_sigusr1_shows_what_a_waiting_run_waits_for_and_the_run_goes_on(env: Env) -> None:
    await seed(env.store, env.stack.platform, 40)
    env.gate.open.clear()
    process = await start_cli(env.config)
    while env.gate.waiting < 4:  # every lookup held at the platform
        await asyncio.sleep(0.01)
    process.send_signal(signal.SIGUSR1)
    await asyncio.sleep(0.5)
    env.gate.open.set()
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0 and "checked 40" in out.decode()
    dump = err.decode()
    assert "dragoman reconcile: " in dump and " task(s)" in dump
    assert "in _work" in dump  # the workers, waiting for the platform's answers


async def test_a_second_runner_is_refused(env: Env) -> None:
    await seed(env.store, env.stack.platform, 50)
    env.gate.open.clear()
    first = await start_cli(env.config)
    while env.gate.waiting == 0:
        await asyncio.sleep(0.01)
    code, _, err = await cli(env.config)
    assert code == 4 and "another reconciliation is running" in err
    env.gate.open.set()
    await asyncio.wait_for(first.communicate(), 60)
    assert first.returncode == 0


async def test_a_platform_outage_exits_1_and_the_next_run_resumes(env: Env) -> None:
    await seed(env.store, env.stack.platform, 60)
    await stop_platform(env.stack)
    code, out, err = await cli(env.config)
    assert code == 1, err
    assert "incomplete" in out and "platform unavailable" in out
    assert await env.checkpointed() == set()
    await start_platform(env.stack)
    code, out, err = await cli(env.config)
    assert code == 0, err
    assert "completed, resumed" in out and "checked 60" in out


async def test_resume_without_an_unfinished_run_exits_1(env: Env) -> None:
    code, _, err = await cli(env.config, "--resume")
    assert code == 1 and "no unfinished run" in err
    code, _, err = await cli(env.config, "--resume", "--fresh")
    assert code == 2 and "exclude each other" in err


async def test_a_progress_bar_on_a_terminal(env: Env) -> None:
    await seed(env.store, env.stack.platform, 120)
    leader, follower = pty.openpty()
    process = await start_cli(env.config, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, leader, 65536)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    await process.wait()
    screen = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, screen
    assert "reconciling" in screen and "120/120" in screen and "100%" in screen
