"""Alembic environment: uses the connection the orchestrator hands over, or the URL it was given."""

from alembic import context
from sqlalchemy import create_engine

from orchestrator.db.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    """Run migrations on the given connection (SQLite needs batch mode to alter tables)."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.attributes.get("connection_url") or config.get_main_option("sqlalchemy.url"))
        with engine.begin() as own:
            context.configure(connection=own, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
