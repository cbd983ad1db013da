"""Audits: what mailwarden checks outside the milter protocol (DNS, MTA)."""
