"""Business rules with no I/O: the credit ledger and the job state machine."""
