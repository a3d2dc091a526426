"""idempotency keys per client

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 03:30:00.000000

An Idempotency-Key was unique across all clients, so any client could replay, probe or
squat another's key (issue 18). Now it is unique per (client_identity, key). Orders
placed before the upgrade get no client (NULL, which never conflicts): their keys are
never replayed again, as if expired. The downgrade keeps the oldest order of each key
and releases the key from the others, since the old global uniqueness needs that.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("client_identity", sa.String(length=64), nullable=True))
    op.drop_constraint(op.f("uq_orders_idempotency_key"), "orders", type_="unique")
    op.create_unique_constraint(
        op.f("uq_orders_client_identity"), "orders", ["client_identity", "idempotency_key"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_orders_client_identity"), "orders", type_="unique")
    op.execute(
        "UPDATE orders SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND id NOT IN "
        "(SELECT min(id) FROM orders WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key)"
    )
    op.drop_column("orders", "client_identity")
    op.create_unique_constraint(op.f("uq_orders_idempotency_key"), "orders", ["idempotency_key"])
