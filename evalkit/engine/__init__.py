"""The run engine: the runner and its passes, run settings, the results store and the writers of the output tables."""
