"""Database URLs as SQLAlchemy takes them, for the prediction store (`monitoring.db`) and Optuna's shared
study (`search.storage`)."""

from __future__ import annotations


def sqlalchemy_url(url: str) -> str:
    """`url`, PostgreSQL's through psycopg2 (a dependency) unless it names another driver: SQLAlchemy's
    default for postgresql:// is psycopg 3, which is not installed."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url
