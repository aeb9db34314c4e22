"""Command-line entry points (typer): ``netvlad-map`` and ``netvlad-run``. They parse and call one function."""
