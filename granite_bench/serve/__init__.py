"""Serving: the project's own small OpenAI-compatible server over a runner (`granite-bench serve`), the load
generator against any such endpoint (`granite-bench load`) and endpoint parity's client (`granite-bench parity
--endpoint`). Nothing here reaches into the model: the server drives a runner through its contract only."""
