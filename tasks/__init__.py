"""Task bodies of recpipe: plain functions with typed inputs, called by DAGs, the CLI and tests."""
