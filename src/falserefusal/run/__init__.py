"""One run for every front end: options and config, preparation, the Run (families, gates decided once), results files, the summary."""
