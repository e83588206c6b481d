# Conveniences over quickstart.py, which needs nothing but Python 3.11+.
PYTHON ?= python3

.PHONY: demo test bench lock clean

demo:
	$(PYTHON) quickstart.py demo

test:
	$(PYTHON) quickstart.py test

bench:
	$(PYTHON) quickstart.py bench

lock:
	$(PYTHON) quickstart.py lock

clean:
	rm -rf .venv build *.egg-info
