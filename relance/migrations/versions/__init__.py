"""The ledger's schema revisions, one module each, applied in order by `relance db upgrade`."""
