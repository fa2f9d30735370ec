"""What every model shares: vocabularies, checkpoints, table types, feature arrays, embedding
tables, the training loop."""
