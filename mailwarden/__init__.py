"""mailwarden: a mail filter (milter) that secures a mail server in one process."""

__version__ = "0.1.0"
