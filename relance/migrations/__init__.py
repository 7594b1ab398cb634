"""The ledger's Alembic environment and revisions, shipped inside the package so that an
installed relance can upgrade its ledger with no alembic.ini and no source checkout."""
