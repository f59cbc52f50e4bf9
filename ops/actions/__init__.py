"""What an operator does, for the CLI and the console alike: each action runs its transaction(s)
and records its audit entry (`ops.audit`) in the same one, so the two front ends share one copy."""
