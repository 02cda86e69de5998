"""Persistence: tables and the database session."""

from .session import Database

__all__ = ["Database"]
