"""The operations: admission, create, revert, delete, recovery, job records, offline disk steps."""
