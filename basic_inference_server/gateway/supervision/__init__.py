"""The children: one handle per model server or support process, started, watched, restarted
and stopped by the :class:`~.supervisor.Supervisor`, on ports it picks."""
