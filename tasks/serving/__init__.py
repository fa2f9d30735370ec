"""The recommendation path (channels under quotas, pre-ranking, full ranking and fusion, diversity, exploration; batch feeds and the online endpoint): see docs/METHODS.md."""
