"""What a person on call asks of the service, as functions that take a session (or a Redis
client) and return plain data: the CLI prints them, the metrics exporter serves them, tests
call them. Nothing here commits, except `inbox.prune_batch`'s caller, batch by batch."""
