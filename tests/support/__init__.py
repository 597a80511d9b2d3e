"""Helpers shared by the tests: model factories (`support.models`), reference implementations
(`support.reference`) and the committed sample models (`support.samples`). tests/ is on sys.path
(pytest's rootdir conftest), so tests import them as ``from support.models import random_model``."""
