"""The ``mutualnet`` command: a Click group of thin commands, one module per area.

Commands parse, call the library, print. Errors of the project's two families
(``mutualnet.errors`` and ``export.errors``) become one line on stderr and exit 2
(usage) or 1 (failure), never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from export.errors import ExportError

from ..errors import MutualNetError


class _ProjectError(click.ClickException):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.exit_code = int(getattr(error, "exit_code", 1))  # type: ignore[misc]

    def format_message(self) -> str:
        return self.message


class _OneLineUsage(MutualNetError):
    exit_code = 2


class MutualNetGroup(click.Group):
    """A group that turns the project's exceptions into one-line errors with exit 1/2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a bad flag or value: one line, not click's three
            where = e.ctx.command_path if e.ctx is not None else "mutualnet"
            raise _ProjectError(_OneLineUsage(
                f"{e.format_message()} (see `{where} --help`)")) from e
        except (MutualNetError, ExportError) as e:
            raise _ProjectError(e) from e
        except OSError as e:  # a path the user gave cannot be read or written
            where = f" ({e.filename})" if e.filename else ""
            raise _ProjectError(MutualNetError(
                f"{e.strerror or e}{where}: check the path, its permissions and free disk space"
            )) from e


@click.group(cls=MutualNetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mutualnet")
def cli() -> None:
    """Train one slimmable network with MutualNet and deploy its subnets."""


def _register() -> None:
    from . import deploy, export, info, train, val, weights

    for module in (info, weights, export, train, deploy, val):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    from ..device import passive_omp_default

    passive_omp_default()  # before torch is imported: OpenMP threads wait without spinning
    sys.exit(cli.main(prog_name="mutualnet"))
