"""From landing batches to the lake: batch discovery, CSV/Parquet staging, contract rules, row-level validation with quarantine, the daily ingest, the MovieLens converter."""
