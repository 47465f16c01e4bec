"""Storage: SQLModel tables, keyword-only repository functions, Alembic migrations."""
