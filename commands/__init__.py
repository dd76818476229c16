"""What every command of the project shares, and every package may use: the runner
(``commands.runner``: one-line errors, the exit-code table, stages, error logs) and the errors it
maps to exit codes (``commands.errors``: input, model file, output and missing-library errors,
``require`` for optional libraries). It imports nothing of the project."""
