"""Plain facts and validation, torch-free: the catalog of data sets, models and attacks
(``catalog``), the checks of user-typed values (``validation``), the run config and presets
(``presets``), sanity checks of attack results (``sanity``), errors, formatting, atomic files."""
