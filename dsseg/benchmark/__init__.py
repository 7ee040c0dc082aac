"""Speed and behaviour measurements: per-stage latency and memory, every stage against its
straightforward version, and studies of method parameters on planted attention."""
