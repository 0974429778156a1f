"""OpenAI-compatible serving: `python -m lm.serve --run DIR` (see lm/serve/app.py)."""
