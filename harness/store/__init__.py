"""The run store: content-addressed runs, labels and metrics on disk; export; safe paths."""
