"""Describe a schema from the PostgreSQL catalog, for comparing two databases."""

from __future__ import annotations

from typing import Any

import psycopg

QUERIES: dict[str, str] = {
    "relations": """
        SELECT c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attnum
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = %(schema)s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, a.attnum""",
    "indexes": """
        SELECT i.relname, t.relname, ix.indisunique, ix.indisprimary,
               pg_get_indexdef(ix.indexrelid)
        FROM pg_index ix
        JOIN pg_class i ON i.oid = ix.indexrelid
        JOIN pg_class t ON t.oid = ix.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = %(schema)s ORDER BY 1""",
    "constraints": """
        SELECT con.conname, cl.relname, con.contype::text, con.confdeltype::text,
               con.confupdtype::text, pg_get_constraintdef(con.oid)
        FROM pg_constraint con
        JOIN pg_class cl ON cl.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = con.connamespace
        WHERE n.nspname = %(schema)s ORDER BY 1""",
    "enums": """
        SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = %(schema)s GROUP BY 1 ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype::text FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = %(schema)s AND t.typtype <> 'c' AND t.typelem = 0 ORDER BY 1""",
    "functions": """
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s ORDER BY 1""",
    "triggers": """
        SELECT tg.tgname, c.relname FROM pg_trigger tg
        JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT tg.tgisinternal ORDER BY 1""",
}


def describe_schema(libpq_url: str, schema: str = "public") -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(libpq_url) as conn:
        return {
            name: [tuple(row) for row in conn.execute(query, {"schema": schema}).fetchall()]
            for name, query in QUERIES.items()
        }
