"""The bottom layer every process imports: the tables, and what reaching them takes.

`models.app` maps the tables the Next.js app owns through Prisma (the `public` schema);
`models.inbox` and its neighbours map the service's own tables (the `ingest` schema by default).
Settings, the engine and sessions, connectivity checks and logging set-up live here too: every
process (receiver, workers, CLI, migrations) needs them first, they depend on nothing else of the
service, and a package of their own would sit at the same bottom layer with the same importers.
"""
