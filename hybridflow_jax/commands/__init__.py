"""The work of each `hybridflow` command, one module per command (`prepare-data`: prepare_data.py).

Each has `run(ns) -> int | None`: ns is the command's parsed flags (`cli.build_parser`), the result
its exit status (None: 0). `cli.main` imports only the module of the command being run, and a
module imports what it needs at the top, jax included; `decompress` is the exception, checking its
input before it loads the codec.
"""
