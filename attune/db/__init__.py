"""The PostgreSQL adapter: the only package that imports psycopg.

Callers use `Database` (async, trio) and the Structs in `attune.models`; psycopg
exceptions never leave this package (see `attune.errors`).
"""

from attune.db.database import Database, describe_url
from attune.models import Action, Claim, Execution, Worker

__all__ = ["Action", "Claim", "Database", "Execution", "Worker", "describe_url"]
