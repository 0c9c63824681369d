"""The domain app: accounts and roles, chat, ratings, comparisons, training runs, model versions."""
