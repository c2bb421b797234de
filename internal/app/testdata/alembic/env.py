"""Alembic environment: online migrations only, in one transaction.

Like the Brownie metadata repository's own env.py, the whole upgrade runs in
one transaction (Alembic's transactional DDL on PostgreSQL), and the
alembic_version row is written in it. SQLAlchemy 1.4 on psycopg2 (what
Debian 12 ships; the original runs SQLAlchemy 2 on psycopg 3).
"""
import os
from logging.config import fileConfig

import psycopg2
import sqlalchemy
from alembic import context

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)

if context.is_offline_mode():
    raise SystemExit("offline mode is not supported")

dsn = context.get_x_argument(as_dictionary=True).get("dsn") or os.environ["BROWNIE_ALEMBIC_DSN"]
engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn),
                                  poolclass=sqlalchemy.pool.NullPool)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transactional_ddl=True,
                      transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
