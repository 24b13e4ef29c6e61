"""Real tasks used by the test suite (the workers under test import them as `tests.tasks.*`)."""
