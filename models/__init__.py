"""Data layer: settings, the database engine and sessions, and the table models.

`models.app` maps the tables the Next.js app owns through Prisma (the `public` schema);
`models.inbox` and its neighbours map the service's own tables (the `ingest` schema by default).
"""
