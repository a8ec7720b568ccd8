# Convenience wrappers around ./dev (which needs nothing but bash and python3).
.PHONY: demo test fuzz bench setup
demo test fuzz bench setup:
	./dev $@
