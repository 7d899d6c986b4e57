"""What a fit adds to Lightning: precision plugins, the time budget, checkpoints that survive signals, the
fit summary and test report callbacks."""
