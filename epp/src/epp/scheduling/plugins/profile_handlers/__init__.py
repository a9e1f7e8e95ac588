"""Profile handlers: decide which scheduling profiles run and whose pick is the answer."""
