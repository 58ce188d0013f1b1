"""Command-line interface. Imports every layer; nothing imports it."""
