"""Write-ups of finished runs: tables, verdicts and plots from the figures a run
or its evaluation recorded (trainer.evaluate's result dicts), read as data.
Imports nothing from the project; the commands in tools/ call it."""
