"""The control surface, torch-free: what crosses between an engine and its clients (``records``,
``protocol``), the client (``client``), run directories (``run_files``, ``run_dirs``), starting a
detached engine (``detached``). With ``core`` it is all that the dashboard imports."""
