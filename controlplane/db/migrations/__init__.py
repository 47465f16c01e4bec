"""The schema's migrations (Alembic), run by db.engine.migrate() at every start."""

NOT_MODELS = {"apscheduler_jobs"}  # made by a migration (0012), read and written by APScheduler only


def include_object(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    """Autogenerate (and the drift test) compares the models only, not tables a library owns."""
    table = obj.table.name if type_ in ("column", "index") else name
    return table not in NOT_MODELS
