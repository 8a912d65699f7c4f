"""Options and output helpers shared by every command, so ``--db`` and ``--json`` behave
the same everywhere."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from hwcost.errors import HwcostError


def store_option(f: Callable) -> Callable:
    """``--db URL``: the store to use (default: $HWCOST_DB, else the embedded SQLite file)."""
    return click.option(
        "--db", "db_url", envvar="HWCOST_DB", default=None, metavar="URL",
        help="Store URL: sqlite:///PATH or postgresql+psycopg://USER:PW@HOST/DB "
             "[env: HWCOST_DB; default: embedded SQLite in the user data dir].")(f)


def json_option(f: Callable) -> Callable:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON instead of a table.")(f)


def device_option(f: Callable) -> Callable:
    """``--device``: a device kind (cpu, cuda, hpu) or a stored fingerprint or name."""
    return click.option("--device", "device", default="cpu", show_default=True,
                        help="Device kind of this machine (cpu, cuda, hpu), or a stored device "
                             "fingerprint (prefix) or product name.")(f)


QUICK_HELP = ("Few timing samples, no re-measuring, no waiting for a quiet machine: for smoke "
              "tests, not numbers to keep.")


def quick_option(then: str) -> Callable[[Callable], Callable]:
    """``--quick``: quick timings; ``then`` says what the command does with them."""
    return click.option("--quick", is_flag=True, help=f"{QUICK_HELP} {then}")


ALLOW_UNSTABLE_HELP = ("Plan on quick or unstable timings too (by default only full timings of a "
                       "stable machine count; the others are left to the fallbacks).")


def allow_unstable_option(f: Callable | None = None, *, help: str = ALLOW_UNSTABLE_HELP
                          ) -> Callable:
    """``--allow-unstable``: quick and unstable timings count as measured costs."""
    deco = click.option("--allow-unstable", is_flag=True, help=help)
    return deco(f) if f is not None else deco


def measured_only_option(f: Callable) -> Callable:
    """``--measured-only``: plan from measured costs alone."""
    return click.option("--measured-only", is_flag=True,
                        help="Plan from measured costs alone (no learned or roofline "
                             "estimates).")(f)


def threads_option(f: Callable) -> Callable:
    """``--threads N``: CPU threads to time with."""
    return click.option("--threads", default=None, type=click.IntRange(min=1),
                        help="CPU threads to time with (part of the device fingerprint) "
                             "[default: every CPU this process may use].")(f)


def require_existing(db_url: str | None) -> None:
    """Refuse, in one line and creating nothing, an SQLite store path that does not exist: a
    command that only reads (or needs what a store already holds) must not make an empty
    store of a typo. ``hwcost db init`` and the commands that measure create stores."""
    from hwcost.errors import StoreError
    from hwcost.store import default_url, redact_urls, sqlite_path

    url = db_url or default_url()
    if not url.startswith("sqlite"):
        return
    with errors_as_click():
        path = sqlite_path(url)
        if path and path != ":memory:" and not Path(path).is_file():
            raise StoreError(f"no store at {redact_urls(url)} (no such file); `hwcost db init "
                             f"--db {redact_urls(url)}` creates one, or check the path")


@contextmanager
def open_cli_store(db_url: str | None, *, read_only: bool = False, must_exist: bool = False
                   ) -> Iterator[Any]:
    """Open the store for a command; library errors become one-line CLI errors.

    ``read_only``: the command only reads, so an existing SQLite file is opened read-only
    (a store on a read-only file or disk still works). ``read_only`` and ``must_exist``
    refuse an SQLite path that does not exist (:func:`require_existing`).
    """
    from hwcost.store import open_store

    if read_only or must_exist:
        require_existing(db_url)
    with errors_as_click():
        store = open_store(db_url, read_only=read_only)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def errors_as_click() -> Iterator[None]:
    """Turn library errors into ``click.ClickException`` so users see one line, no traceback."""
    from hwcost.store import redact_urls

    try:
        yield
    except HwcostError as e:
        raise click.ClickException(redact_urls(str(e))) from None
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in TORCH_PACKAGES:
            raise
        ctx = click.get_current_context(silent=True)
        what = f"`{ctx.command_path}`" if ctx else "this command"
        raise click.ClickException(
            f"{what} runs the model and needs {top}, which is not installed: pip install "
            "torch --index-url https://download.pytorch.org/whl/cpu && pip install "
            "'hwcost[torch]' (planning from a store needs neither)") from None


TORCH_PACKAGES = ("torch", "transformers", "torchao", "safetensors")
"""The ``hwcost[torch]`` extra: commands that load or run a model need it."""


def handle_errors(f: Callable) -> Callable:
    """Decorator form of :func:`errors_as_click`."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        with errors_as_click():
            return f(*args, **kwargs)
    return wrapper


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain fixed-width text table (no dependency, stable for tests)."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([line, rule, *body])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


def progress_enabled() -> bool:
    """Progress bars only where a person watches (a terminal), never in CI logs or pipes."""
    return sys.stderr.isatty()
