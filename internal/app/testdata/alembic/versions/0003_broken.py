"""Broken on purpose.

Its last statement fails: a foreign key to a table that does not exist.
Upgrading to it must leave every shard as it was, the statements before the
failure included.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("teams", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_teams_archived_at", "teams", ["archived_at"])
    op.add_column("incidents", sa.Column("runbook_id", sa.Integer(), nullable=True))
    op.create_foreign_key("incidents_runbook_id_fkey", "incidents", "runbooks", ["runbook_id"], ["id"])


def downgrade():
    op.drop_constraint("incidents_runbook_id_fkey", "incidents", type_="foreignkey")
    op.drop_column("incidents", "runbook_id")
    op.drop_index("ix_teams_archived_at", table_name="teams")
    op.drop_column("teams", "archived_at")
