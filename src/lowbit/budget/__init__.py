"""Mixed precision to a budget: measured sensitivity per tensor and scheme, then an allocation."""
