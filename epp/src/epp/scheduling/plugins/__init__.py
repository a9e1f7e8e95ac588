"""The built-in plugins, one per module, grouped by kind; ``epp.scheduling.registry`` lists them."""
