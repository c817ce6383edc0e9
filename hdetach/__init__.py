"""The `hdetach` command line: the application layer over studies, workers and service."""
