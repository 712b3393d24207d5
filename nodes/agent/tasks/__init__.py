"""The agent's commands, by purpose. Each module's `register(agent)` adds its handlers to the agent's app."""
