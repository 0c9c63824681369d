"""Every write of the domain goes through a function here (``do_*``), in its own transaction."""
