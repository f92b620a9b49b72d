"""Everything behind ``main.py`` that the autograder does not see: data, pipelines, the training engine."""
