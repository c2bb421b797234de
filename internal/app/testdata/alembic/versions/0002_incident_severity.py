"""Incident severity.

Columns, an index and a data migration on a sharded and a replicated table.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("incidents", sa.Column("severity_score", sa.Integer(), nullable=True))
    op.create_index("ix_incidents_severity_score", "incidents", ["severity_score"])
    op.execute("UPDATE incidents SET severity_score = CASE priority WHEN 'CRITICAL' THEN 4 ELSE 1 END")
    op.add_column("users", sa.Column("locale", sa.String(length=16), server_default="en", nullable=False))


def downgrade():
    op.drop_column("users", "locale")
    op.drop_index("ix_incidents_severity_score", table_name="incidents")
    op.drop_column("incidents", "severity_score")
