"""Problem 4 of the assignment: its studies as Optuna studies, and the report built from their logs."""
