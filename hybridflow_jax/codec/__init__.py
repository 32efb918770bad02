"""Real bitstreams: entropy coding with frozen integer tables, and the file format."""
