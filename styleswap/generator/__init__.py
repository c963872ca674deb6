"""The generator half: everything that touches raw medical files and style-intervention engines."""
