"""The interface: one module per tab, each with a `build(engine)` that lays
out the tab and wires its events. Handlers are thin: they call the engine."""
