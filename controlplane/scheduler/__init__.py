"""scheduler: APScheduler jobs that wake the shift scaling service; they only call services."""
