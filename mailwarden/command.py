"""What every ``mailwarden`` command shares: the default configuration file,
the exit statuses, and loading the configuration a command is given.

The command modules (:mod:`mailwarden.cli` and those it lists in
``COMMAND_MODULES``) take these from here, so that none of them reaches
into another; ``cli`` stays an argparse front.
"""

from __future__ import annotations

import sys

from .config import Config, ConfigError, load

DEFAULT_CONFIG = "/etc/mailwarden/mailwarden.ini"

# the exit statuses: done; done, and something failed; the configuration
# (or a file it names) did not load
EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def load_config(path: str) -> Config:
    """The configuration in ``path``, validated; one that does not load is
    printed to standard error (``FILE:LINE: [section] key: ...``) and the
    command ends with :data:`EXIT_CONFIG`."""
    try:
        return load(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def add_config_argument(parser) -> None:
    """``-c/--config FILE``, :data:`DEFAULT_CONFIG` when not given."""
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file (default {DEFAULT_CONFIG})")
