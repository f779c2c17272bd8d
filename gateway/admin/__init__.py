"""Admin work behind the CLI: the programmatic API (api) and the directory YAML format (directory_file)."""
