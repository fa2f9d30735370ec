"""Great Expectations suites and checkpoints, as code."""
