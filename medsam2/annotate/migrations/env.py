"""Alembic environment of the annotation database.

Migrations run on the connection `medsam2.annotate.db.migrate` passes in, inside its transaction and
lock. A new revision (after changing `medsam2.annotate.schema`) is written with::

    python -c "from alembic import command; from medsam2.annotate.db import alembic_config, connect, database_url; \
from pathlib import Path; c = alembic_config(); c.attributes['engine'] = connect(database_url('dev.db', Path('.'))); \
command.revision(c, message='what changed', autogenerate=True)"

run against a database at the previous revision, then checked and tidied by hand.
"""

from alembic import context

from medsam2.annotate.schema import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    connection = config.attributes["engine"].connect()

# Batch mode lets later migrations alter columns on SQLite, which has no ALTER COLUMN.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
