# Conveniences over quickstart.py, which needs nothing but Python 3.11+.
PYTHON ?= python3

.PHONY: demo test bench clean

demo:
	$(PYTHON) quickstart.py demo

test:
	$(PYTHON) quickstart.py test

bench:
	$(PYTHON) quickstart.py bench

clean:
	rm -rf .venv build *.egg-info
