"""What a watcher sees while a phase runs: progress, heartbeats, live metrics."""
