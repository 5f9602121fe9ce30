"""Running dragoman: serve, demo, check-config, settings-doc."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dragoman.cli.common import config_option, load, main
from dragoman.logs import LOG_FORMATS, LogFormat
from dragoman.settings import SettingsError, load_settings


@main.command()
@config_option
@click.option("--log-level", default="INFO", show_default=True, envvar="DRAGOMAN_LOG_LEVEL")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="DRAGOMAN_LOG_FORMAT",
    help="text: one readable line per event; json: one JSON object per line (both redacted).",
)
def serve(config: Path | None, log_level: str, log_format: LogFormat) -> None:
    """Run the proxy."""
    from dragoman.server import run

    sys.exit(run(load(config), log_level=log_level, log_format=log_format))


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE (with the DRAGOMAN_* environment) and list every problem."""
    try:
        settings = load_settings(file)
    except SettingsError as exc:
        click.echo(f"{file}: {len(exc.problems)} problem(s)", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    operations = len(settings.catalog.operations)
    issuers = len(settings.identity.oidc)
    click.echo(f"{file}: OK ({issuers} issuer(s), {operations} operation(s))")


@main.command()
@click.option("--check", is_flag=True, help="Run the scripted walk-through and exit.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--proxy-port", default=8080, show_default=True)
@click.option("--platform-port", default=8090, show_default=True)
@click.option("--issuer-port", default=8070, show_default=True)
@click.option("--console-port", default=8060, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
)
def demo(
    check: bool,
    host: str,
    proxy_port: int,
    platform_port: int,
    issuer_port: int,
    console_port: int,
    state_dir: Path,
) -> None:
    """Run the demo: identity issuer, payment platform, console page and dragoman."""
    from dragoman.demo.runner import DemoPorts, run_check, run_demo

    if check:
        sys.exit(run_check())
    ports = DemoPorts(
        proxy=proxy_port, platform=platform_port, issuer=issuer_port, console=console_port
    )
    sys.exit(run_demo(host=host, ports=ports, state_dir=state_dir))


@main.command("settings-doc")
def settings_doc() -> None:
    """Print the settings reference (the content of docs/settings.md)."""
    from dragoman.settings_doc import render

    click.echo(render(), nl=False)
