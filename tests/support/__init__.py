"""Test doubles and generators the tests (and fuzz/ scripts) use; not part of the product."""
