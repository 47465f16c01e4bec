"""HTTP edge: thin routes over services, one error mapping, schemas separate from tables."""
