"""Built-in plugins. Each module is a plugin registered through the ``fipframe`` entry points."""
